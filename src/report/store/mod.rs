//! The report store: a SQLite index plus media files, crash-safe and within a disk budget.
//!
//! What flows in: [`Store::begin`] opens a report; its [`ReportWriter`] takes frames, sentences
//! and audio clips as they stream and is closed by `finish` or `abort`. What flows out:
//! [`Store::list`] / [`Store::get`] / [`Store::usage`], HTML pages and the recovery report.
//!
//! Durability contract: a segment is *acknowledged* when its `add_*` call returns Ok, and from
//! then on it survives kill -9 and power cuts. The order that makes this so:
//! 1. media bytes are encoded in memory, written to `.tmp-<n>.ext`, fsynced, renamed to their
//!    final name and the directory fsynced (`crate::sys::fs::write_atomic`);
//! 2. then the segment and media rows are committed in one transaction, with
//!    `synchronous=FULL` — in WAL mode, NORMAL survives a process crash but may lose the last
//!    commits on power loss, and an acknowledged segment must survive both; the price is one WAL
//!    fsync per segment, at sentence rate, beside the two fsyncs the media file costs anyway.
//!
//! A crash between 1 and 2 leaves a media file nobody references; recovery (run by
//! [`Store::open`]) removes it, removes `.tmp-*` leftovers, marks reports left open as
//! incomplete, and drops index rows whose media file is missing or short. Retention deletes the
//! rows of a report first and its files after, so a crash there also leaves only orphans.
//!
//! Blocking: every call does file and SQLite I/O. Use the store from a dedicated thread or
//! `spawn_blocking`; `Store` is a cheap clone (`Arc`) and `Send + Sync`, a `ReportWriter` is
//! `Send`. Writers of several reports may run at once; their writes are serialized by one lock.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use rusqlite::{params, Connection, ErrorCode};
use serde::Serialize;

use super::layout::{self, MediaKind};
use super::retention::RetentionPolicy;
use super::{
    cite, durable, html, media, MediaRef, Report, ReportError, ReportId, ReportMeta, ReportStats,
    ReportStatus, Result, TextTimings,
};
use crate::capture::{AudioClip, Frame};
use crate::sys::tree::Tree;

mod alerts;
mod outbox;
mod read;
mod recover;
mod retain;

pub use alerts::{AlertMark, AlertStateRow};
pub use outbox::{OutboxHook, OutboxMessage, OutboxRow, OutboxStats};

/// Schema version in `PRAGMA user_version`; bump with a migration when the tables change.
/// 2: alert states and marks ([`alerts`]). 3: region segments (kind `region`, columns `box`
/// and `of_seq`; see [`SEGMENTS_V3`]).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE reports (
    id                TEXT PRIMARY KEY,
    created_ms        INTEGER NOT NULL,
    finished_ms       INTEGER,
    status            TEXT NOT NULL CHECK (status IN ('open', 'complete', 'incomplete')),
    reason            TEXT,
    trigger           TEXT NOT NULL,
    meta_json         TEXT NOT NULL,
    stats_json        TEXT,
    unknown_citations INTEGER NOT NULL DEFAULT 0,
    -- Sum of this report's media sizes, kept in step with the media table so retention can
    -- pick reports without summing.
    media_bytes       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX reports_by_age ON reports (created_ms, id);
-- segments: SEGMENTS_V3, created in the same transaction
CREATE TABLE media (
    report_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    path      TEXT NOT NULL UNIQUE,
    bytes     INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    PRIMARY KEY (report_id, seq),
    FOREIGN KEY (report_id, seq) REFERENCES segments (report_id, seq) ON DELETE CASCADE
) WITHOUT ROWID;
";

/// The segments table since version 3 (created under this name, or as `segments_v3` when a
/// version 1 or 2 index is rebuilt; see `Inner::migrate`).
const SEGMENTS_V3: &str = "
CREATE TABLE segments (
    report_id   TEXT NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('image', 'text', 'audio', 'region')),
    text        TEXT,     -- sentence, or audio transcript
    source      TEXT,     -- camera (image, region) or audio source
    at_ms       REAL,     -- text: since generation started
    token_start INTEGER,
    token_end   INTEGER,
    time_ms     INTEGER,  -- image, region: captured; audio: started; ms since the Unix epoch
    frame_seq   INTEGER,
    width       INTEGER,  -- image: the frame; region: the crop
    height      INTEGER,
    sample_rate INTEGER,
    samples     INTEGER,
    box         TEXT,     -- region: x0,y0,x1,y1 in thousandths of the frame
    of_seq      INTEGER,  -- region: the image segment it is cut from
    PRIMARY KEY (report_id, seq)
) WITHOUT ROWID;
";

/// The columns versions 1 and 2 had, copied over when the table is rebuilt for version 3.
const SEGMENTS_V2_COLUMNS: &str = "report_id, seq, kind, text, source, at_ms, token_start, \
    token_end, time_ms, frame_seq, width, height, sample_rate, samples";

/// How many reports the index page lists (newest first). Rewritten on every finished report,
/// so it stays small: older reports are one `gemba report list` away.
pub const INDEX_PAGE_REPORTS: usize = 200;

/// Free space a full-disk eviction aims for beyond the failed write itself, so the next few
/// writes (and the index's own growth) do not hit the wall again at once.
const DISK_FULL_HEADROOM: u64 = 256 * 1024;

/// Space held in `<store>/reserve` for the index. On a full disk SQLite cannot even record an
/// eviction (the WAL must grow to delete rows); removing the reserve first lets it, and the
/// reserve is taken again once reports are evicted. 256 KiB covers dozens of delete transactions
/// and the checkpoint that follows them.
const RESERVE_BYTES: u64 = 256 * 1024;

/// Room kept under the byte budget beyond each write, for what grows without asking: the index
/// (its WAL grows by a few pages per commit) and the pages rewritten when a report closes.
const BUDGET_MARGIN: u64 = 64 * 1024;

/// Reports fetched per retention round.
const EVICTION_BATCH: usize = 64;

/// The report store. Cloning is cheap and shares the store.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    dir: PathBuf,
    conn: Connection,
    policy: RetentionPolicy,
    /// False for a store opened by `open_read_only` (the CLI beside a running daemon).
    writable: bool,
    /// The flock that makes this process the store's only writer; dropped with the store.
    _lock: Option<crate::sys::fs::Lock>,
    /// Sums kept in step with the index and the html directory, for the byte budget.
    media_bytes: u64,
    html_bytes: u64,
    /// Reports and bytes evicted since the store was opened (metrics).
    evicted: Evictions,
    recovery: RecoveryReport,
    /// Causes already logged (page writes failing, say): log once, not per report.
    warned: HashSet<&'static str>,
    /// Builds a closing report's outbox messages (`None`: no outbox).
    outbox_hook: Option<OutboxHook>,
    /// The outbox table exists.
    outbox_ready: bool,
    /// Messages dropped since the store was opened (evicted with their report, or over the cap).
    outbox_dropped: u64,
    /// A version 1 or 2 index read beside the older daemon that keeps it (`open_read_only`):
    /// its segments table has no region columns.
    old_segments: bool,
}

/// What recovery found and fixed when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecoveryReport {
    /// `PRAGMA integrity_check` at open: `["ok"]` when the index is sound.
    pub integrity: Vec<String>,
    /// Reports a previous run left open, now marked incomplete.
    pub cut_off: Vec<ReportId>,
    /// Index rows whose media file was missing, short or corrupt; the rows were removed.
    pub media_fixed: Vec<MediaProblem>,
    /// Media files no index row pointed at (written just before a crash, or left by an
    /// interrupted eviction), removed. Paths relative to the store.
    pub orphans_removed: Vec<String>,
    /// `.tmp-*` files of interrupted writes, removed.
    pub temp_removed: Vec<String>,
    /// Entries under `media/` and `html/` the store never writes (other names, symbolic links,
    /// special files): left alone, since the store deletes only what it can prove it wrote.
    pub foreign_kept: Vec<String>,
    /// Report pages (re)written because they were missing or the report changed.
    pub pages_written: usize,
}

impl RecoveryReport {
    pub fn integrity_ok(&self) -> bool {
        self.integrity == ["ok"]
    }

    /// Nothing needed fixing.
    pub fn is_clean(&self) -> bool {
        self.integrity_ok()
            && self.cut_off.is_empty()
            && self.media_fixed.is_empty()
            && self.orphans_removed.is_empty()
            && self.temp_removed.is_empty()
    }
}

/// A media file that does not match its index row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaProblem {
    pub report: ReportId,
    pub index: u32,
    pub path: String,
    pub problem: String,
}

/// Returned when a segment is acknowledged (durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub index: u32,
    pub kind: &'static str,
    pub media: Option<MediaRef>,
}

/// What [`ReportWriter::add_sentence`] placed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SentencePlacement {
    /// Frames placed before the sentence (cameras cited here for the first time).
    pub images: Vec<Ack>,
    /// The sentence itself; `None` when nothing but markers was left.
    pub text: Option<Ack>,
    /// Cited names that are no camera of the query.
    pub unknown: Vec<String>,
    /// Regions the sentence cites (well-formed, of cameras of the query), in order.
    pub regions: Vec<cite::Region>,
    /// Their region segments (the crops), placed right after the sentence, in the same order.
    pub crops: Vec<Ack>,
}

/// How far [`ReportWriter::add_sentence`] got with a sentence before an error.
struct PartialSentence {
    sentence: String,
    placed: SentencePlacement,
    /// The text segment is in (or there was none) and the citations are counted.
    text_done: bool,
}

/// Reports removed by retention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eviction {
    pub evicted: Vec<ReportId>,
    pub freed_bytes: u64,
}

/// Which reports [`Store::list`] returns (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// At most this many (`None`: all).
    pub limit: Option<usize>,
    /// `monitor` matches every `monitor:*`; anything else matches exactly.
    pub trigger: Option<String>,
    /// `open`, `complete` or `incomplete`.
    pub status: Option<String>,
    /// Begun at or after this time.
    pub since: Option<Timestamp>,
    /// Begun before this time.
    pub until: Option<Timestamp>,
    /// With a frame of this camera in the query.
    pub camera: Option<String>,
    /// Keyset paging: only reports after this position in the listing order (a report's
    /// `created_at`, to the millisecond, and id — the last of the previous page), so pages stay
    /// consistent while reports arrive or are evicted.
    pub after: Option<(Timestamp, String)>,
}

/// Evictions since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evictions {
    pub reports: u64,
    pub bytes: u64,
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportSummary {
    pub id: ReportId,
    #[serde(serialize_with = "super::ser_ts")]
    pub created_at: Timestamp,
    pub trigger: String,
    pub status: ReportStatus,
    pub segments: u32,
    pub first_sentence: Option<String>,
    pub media_bytes: u64,
    /// The segment index of its first frame (the thumbnail), if it has one.
    pub first_image: Option<u32>,
    /// That frame's file, relative to the store (the index page links it; the API does not
    /// show paths).
    #[serde(skip)]
    pub first_image_path: Option<String>,
}

/// Space the store takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub reports: u64,
    pub open_reports: u64,
    pub segments: u64,
    pub media_bytes: u64,
    pub html_bytes: u64,
    /// index.sqlite, its WAL and the space held in reserve for it.
    pub index_bytes: u64,
    /// What the byte budget counts: media + html + index.
    pub total_bytes: u64,
    pub max_bytes: Option<u64>,
    /// Free space on the file system holding the store.
    pub fs_free_bytes: Option<u64>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` as its only writer, runs recovery (see
    /// [`RecoveryReport`], [`Store::recovery`]) and applies the retention policy.
    pub fn open(dir: impl AsRef<Path>, policy: RetentionPolicy) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        // The store owns media/ and html/ and deletes files in them: a link in their place is
        // refused here, before anything is swept (see crate::sys::tree for why).
        let root = Tree::open(&dir, true)?;
        for sub in [layout::MEDIA_DIR, layout::HTML_DIR] {
            root.sub(sub, true)?;
        }
        let lock_path = dir.join(layout::LOCK_FILE);
        let lock = crate::sys::fs::Lock::try_acquire(&lock_path)
            .map_err(|source| ReportError::Io {
                op: "locking",
                path: lock_path.clone(),
                source,
            })?
            .ok_or_else(|| ReportError::Locked {
                path: dir.clone(),
                lock: lock_path,
            })?;
        let mut inner = Inner::new(&dir, policy, Some(lock))?;
        inner.migrate()?;
        inner.detect_outbox()?;
        inner.recover()?;
        inner.enforce_retention()?; // also takes the index reserve
        Ok(Store {
            shared: Arc::new(Shared {
                dir,
                inner: Mutex::new(inner),
            }),
        })
    }

    /// Opens an existing store for reading beside a running daemon: no lock, no recovery, no
    /// retention; [`Store::begin`] is refused. Pages can still be (re)written: they are derived
    /// from the index and replaced atomically.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join(layout::INDEX_FILE).is_file() {
            return Err(ReportError::NoStore { path: dir });
        }
        let mut inner = Inner::new(&dir, RetentionPolicy::default(), None)?;
        let version = inner.schema_version()?;
        if version == 0 {
            return Err(ReportError::NoStore { path: dir });
        }
        inner.check_schema(version)?;
        inner.old_segments = version < 3;
        inner.detect_outbox()?;
        inner.media_bytes = inner.sum_media_bytes()?;
        inner.html_bytes = Tree::open(&dir, false)?
            .sub(layout::HTML_DIR, false)
            .map_or(0, |t| t.bytes());
        Ok(Store {
            shared: Arc::new(Shared {
                dir,
                inner: Mutex::new(inner),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Absolute path of a media file.
    pub fn media_path(&self, media: &MediaRef) -> PathBuf {
        self.shared.dir.join(&media.path)
    }

    /// Absolute path of a report's page (written on finish, abort and recovery).
    pub fn page_path(&self, id: &ReportId) -> PathBuf {
        self.shared.dir.join(layout::page_path(id))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the in-memory sums possibly stale, never the
        // index (SQLite rolls back an unfinished transaction), so carrying on is safe.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a report. Reports older than the age limit are evicted first.
    pub fn begin(&self, meta: ReportMeta) -> Result<ReportWriter> {
        let id = self.lock().begin(&meta)?;
        Ok(ReportWriter {
            store: self.clone(),
            id,
            cameras_placed: HashSet::new(),
            frames_placed: HashMap::new(),
            partial: None,
            unknown_citations: 0,
            dropped_regions: 0,
            next: 0,
            closed: false,
        })
    }

    /// Reports, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<ReportSummary>> {
        self.lock().list(filter)
    }

    pub fn get(&self, id: &ReportId) -> Result<Report> {
        self.lock().get(id)
    }

    pub fn usage(&self) -> Result<Usage> {
        self.lock().usage()
    }

    /// Reports and bytes retention has evicted since the store was opened.
    pub fn evictions(&self) -> Evictions {
        self.lock().evicted
    }

    /// Applies the retention policy now (age and bytes); the daemon calls this on a timer.
    pub fn enforce_retention(&self) -> Result<Eviction> {
        let mut inner = self.lock();
        inner.check_writable("retention")?;
        inner.enforce_retention()
    }

    /// What recovery found when this store was opened.
    pub fn recovery(&self) -> RecoveryReport {
        self.lock().recovery.clone()
    }

    /// Runs `PRAGMA integrity_check` now; `["ok"]` when sound.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        self.lock().integrity_check()
    }

    /// Writes (or refreshes) a report's page and the index page; returns the report page's path.
    pub fn write_html(&self, id: &ReportId) -> Result<PathBuf> {
        let mut inner = self.lock();
        let path = inner.write_page(id)?;
        inner.write_index_page()?;
        Ok(path)
    }

    /// Writes (or refreshes) the index page; returns its path.
    pub fn write_index_html(&self) -> Result<PathBuf> {
        self.lock().write_index_page()
    }
}

/// Writes one report. Each `add_*` returns once the segment is durable (acknowledged). After a
/// [`ReportError::DiskFull`] the writer is unchanged and the same call can be retried. Dropping
/// an unfinished writer marks the report incomplete.
pub struct ReportWriter {
    store: Store,
    id: ReportId,
    cameras_placed: HashSet<String>,
    /// Each camera's frame segment in this report (the last one placed), for region crops.
    frames_placed: HashMap<String, u32>,
    /// The sentence `add_sentence` is part way through (an error stopped it), so that calling
    /// again with it completes it without writing any of it twice.
    partial: Option<PartialSentence>,
    unknown_citations: u32,
    /// Region markers dropped so far (see [`ReportStats::dropped_regions`]).
    dropped_regions: u32,
    next: u32,
    closed: bool,
}

impl ReportWriter {
    pub fn id(&self) -> &ReportId {
        &self.id
    }

    /// Appends a camera frame (encoded as JPEG).
    pub fn add_image(&mut self, frame: &Frame) -> Result<Ack> {
        self.check_open()?;
        let index = self.next;
        let jpeg = media::encode_jpeg(&self.id, index, frame)?;
        let row = SegmentRow {
            kind: "image",
            source: Some(frame.camera.clone()),
            time_ms: Some(millis(frame.captured_at)),
            frame_seq: Some(i64::try_from(frame.seq).unwrap_or(i64::MAX)),
            width: Some(frame.width.into()),
            height: Some(frame.height.into()),
            ..SegmentRow::default()
        };
        let ack = self.push_media(MediaKind::Jpeg, &jpeg, &row)?;
        self.frames_placed.insert(frame.camera.clone(), index);
        Ok(ack)
    }

    /// Appends the crop of `region` (a box of `frame`, whose frame segment is `frame_index`):
    /// cut from the frame's pixels, stored as its own JPEG.
    pub fn add_region(
        &mut self,
        frame: &Frame,
        frame_index: u32,
        region: &cite::Region,
    ) -> Result<Ack> {
        self.check_open()?;
        let jpeg = crate::report::crop::crop_jpeg(
            &frame.camera,
            &frame.rgb,
            frame.width,
            frame.height,
            region.bbox,
        )
        .map_err(|e| ReportError::BadFrame {
            id: self.id.clone(),
            camera: frame.camera.clone(),
            why: format!("cutting the region {}: {e}", region.bbox),
        })?;
        let (_, _, w, h) = region.bbox.pixels(frame.width, frame.height);
        let row = SegmentRow {
            kind: "region",
            source: Some(frame.camera.clone()),
            time_ms: Some(millis(frame.captured_at)),
            frame_seq: Some(i64::try_from(frame.seq).unwrap_or(i64::MAX)),
            width: Some(w.into()),
            height: Some(h.into()),
            bbox: Some(region.bbox.to_string()),
            of_seq: Some(frame_index.into()),
            ..SegmentRow::default()
        };
        self.push_media(MediaKind::Jpeg, &jpeg, &row)
    }

    /// Stores `bytes` as the next segment's media file, with its row, and acknowledges it.
    fn push_media(&mut self, kind: MediaKind, bytes: &[u8], row: &SegmentRow) -> Result<Ack> {
        let index = self.next;
        let media = self
            .store
            .lock()
            .add_media(&self.id, index, kind, bytes, row)?;
        self.next += 1;
        Ok(Ack {
            index,
            kind: row.kind,
            media: Some(media),
        })
    }

    /// Appends a sentence as given (no citation handling; see [`ReportWriter::add_sentence`]).
    pub fn add_text(&mut self, text: &str, timings: TextTimings) -> Result<Ack> {
        self.add_text_counting(text, timings, self.unknown_citations)
    }

    fn add_text_counting(&mut self, text: &str, timings: TextTimings, unknown: u32) -> Result<Ack> {
        self.check_open()?;
        let index = self.next;
        let row = SegmentRow {
            kind: "text",
            text: Some(text.to_string()),
            at_ms: Some(timings.at.as_nanos() as f64 / 1e6),
            token_start: timings.token_span.map(|s| s.0 as i64),
            token_end: timings.token_span.map(|s| s.1 as i64),
            ..SegmentRow::default()
        };
        self.store.lock().add_text(&self.id, index, &row, unknown)?;
        self.unknown_citations = unknown;
        self.next += 1;
        Ok(Ack {
            index,
            kind: "text",
            media: None,
        })
    }

    /// Appends an audio clip (16-bit mono WAV) with its transcript, if any.
    pub fn add_audio(&mut self, clip: &AudioClip, transcript: Option<&str>) -> Result<Ack> {
        self.check_open()?;
        let index = self.next;
        let wav = media::encode_wav(&self.id, index, clip)?;
        let row = SegmentRow {
            kind: "audio",
            text: transcript.map(str::to_string),
            source: Some(clip.source.clone()),
            time_ms: Some(millis(clip.started_at)),
            sample_rate: Some(clip.sample_rate.into()),
            samples: Some(clip.samples.len() as i64),
            ..SegmentRow::default()
        };
        self.push_media(MediaKind::Wav, &wav, &row)
    }

    /// Appends a streamed sentence with its citations resolved: the frame of each camera cited
    /// for the first time in this report goes in just before the sentence, the `[cam:NAME]`
    /// markers come out of the text, and each region it cites (`[cam:NAME box:…]`) goes in right
    /// after it as a region segment holding its crop. `frames` are the query's frames, one per
    /// camera. Names that match no frame are counted in the report and logged once per report
    /// and name.
    ///
    /// After an error, calling again with the same sentence completes it: nothing already
    /// placed (frame, sentence, crop) is placed twice.
    pub fn add_sentence(
        &mut self,
        sentence: &str,
        timings: TextTimings,
        frames: &[Frame],
    ) -> Result<SentencePlacement> {
        self.check_open()?;
        let names: Vec<&str> = frames.iter().map(|f| f.camera.as_str()).collect();
        let cited = cite::cite(sentence, &names);
        let mut partial = match self.partial.take() {
            Some(p) if p.sentence == sentence => p,
            _ => PartialSentence {
                sentence: sentence.to_string(),
                placed: SentencePlacement {
                    unknown: cited.unknown.clone(),
                    ..Default::default()
                },
                text_done: false,
            },
        };
        match self.place_sentence(&cited, timings, frames, &names, &mut partial) {
            Ok(()) => Ok(partial.placed),
            Err(e) => {
                self.partial = Some(partial);
                Err(e)
            }
        }
    }

    fn place_sentence(
        &mut self,
        cited: &cite::Citations,
        timings: TextTimings,
        frames: &[Frame],
        names: &[&str],
        partial: &mut PartialSentence,
    ) -> Result<()> {
        let frame_of = |camera: &str| {
            frames
                .iter()
                .find(|f| f.camera == camera)
                .expect("cite returns known names")
        };
        for camera in &cited.cameras {
            if self.cameras_placed.contains(camera) {
                continue;
            }
            partial
                .placed
                .images
                .push(self.add_image(frame_of(camera))?);
            self.cameras_placed.insert(camera.clone());
        }
        if !partial.text_done {
            let unknown = self.unknown_citations + cited.unknown.len() as u32;
            if !cited.text.is_empty() {
                partial.placed.text =
                    Some(self.add_text_counting(&cited.text, timings, unknown)?);
            }
            // Counted once the sentence is in, so a retried sentence is not counted twice.
            self.unknown_citations = unknown;
            partial.text_done = true;
            for name in &cited.unknown {
                log_unknown_camera_once(&self.id, name, names);
            }
            for d in &cited.dropped {
                if self.dropped_regions == 0 {
                    log::warn!(
                        "report {}: region marker [{}] dropped ({}); further drops in this \
                         report are only counted (stats.dropped_regions)",
                        self.id,
                        d.marker,
                        d.reason
                    );
                }
                self.dropped_regions += 1;
            }
        }
        for region in &cited.regions[partial.placed.regions.len()..] {
            let frame_index = *self
                .frames_placed
                .get(&region.camera)
                .expect("a cited camera's frame is placed before its sentence");
            let ack = self.add_region(frame_of(&region.camera), frame_index, region)?;
            partial.placed.crops.push(ack);
            partial.placed.regions.push(region.clone());
        }
        Ok(())
    }

    /// Region markers dropped so far in this report.
    pub fn dropped_regions(&self) -> u32 {
        self.dropped_regions
    }

    /// Marks the report complete with its generation figures and writes its page.
    pub fn finish(&mut self, mut stats: ReportStats) -> Result<ReportId> {
        self.check_open()?;
        stats.dropped_regions = self.dropped_regions;
        self.store.lock().close(
            &self.id,
            &ReportStatus::Complete,
            Some(&stats),
            self.unknown_citations,
            None,
        )?;
        self.closed = true;
        Ok(self.id.clone())
    }

    /// As [`ReportWriter::finish`], for an alert's raise or clear: the report's mark and the
    /// rule's new state (its `report_id` set to this report) are written in the transaction that
    /// closes the report.
    pub fn finish_alert(
        &mut self,
        stats: ReportStats,
        mark: &AlertMark,
        state: &AlertStateRow,
    ) -> Result<ReportId> {
        self.check_open()?;
        let mut state = state.clone();
        state.report_id = Some(self.id.as_str().to_string());
        self.store.lock().close(
            &self.id,
            &ReportStatus::Complete,
            Some(&stats),
            self.unknown_citations,
            Some((mark, &state)),
        )?;
        self.closed = true;
        Ok(self.id.clone())
    }

    /// Marks the report incomplete (`aborted: <reason>`) and writes its page.
    pub fn abort(&mut self, reason: &str) -> Result<ReportId> {
        self.check_open()?;
        let status = ReportStatus::Incomplete {
            reason: format!("aborted: {reason}"),
        };
        self.store
            .lock()
            .close(&self.id, &status, None, self.unknown_citations, None)?;
        self.closed = true;
        Ok(self.id.clone())
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(ReportError::Closed {
                id: self.id.clone(),
                status: "already closed",
            });
        }
        Ok(())
    }
}

impl Drop for ReportWriter {
    fn drop(&mut self) {
        if !self.closed {
            let status = ReportStatus::Incomplete {
                reason: "abandoned: the writer was dropped before finish".to_string(),
            };
            if let Err(e) =
                self.store
                    .lock()
                    .close(&self.id, &status, None, self.unknown_citations, None)
            {
                // Recovery will mark it cut off on the next start.
                log::warn!(
                    "report {}: marking it incomplete on drop failed: {e}",
                    self.id
                );
            }
        }
    }
}

/// A model that cites a camera that is not there tends to do it again and again: one cause,
/// logged once per name and process (each report counts its own in `unknown_citations`).
fn log_unknown_camera_once(id: &ReportId, name: &str, cameras: &[&str]) {
    static LOGGED: std::sync::OnceLock<Mutex<HashSet<String>>> = std::sync::OnceLock::new();
    let mut logged = LOGGED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // Bounded: a model inventing a new name every time must not grow this forever.
    if logged.len() < 256 && logged.insert(name.to_string()) {
        log::warn!(
            "report {id}: the model cited camera {name:?}, which is not in the query \
             (cameras: {cameras:?}); marker removed, counted in the report, not logged again"
        );
    }
}

/// Column values of one segment row (see SCHEMA).
#[derive(Debug, Default)]
struct SegmentRow {
    kind: &'static str,
    text: Option<String>,
    source: Option<String>,
    at_ms: Option<f64>,
    token_start: Option<i64>,
    token_end: Option<i64>,
    time_ms: Option<i64>,
    frame_seq: Option<i64>,
    width: Option<i64>,
    height: Option<i64>,
    sample_rate: Option<i64>,
    samples: Option<i64>,
    /// Region: `x0,y0,x1,y1`.
    bbox: Option<String>,
    /// Region: the frame's segment index.
    of_seq: Option<i64>,
}

fn millis(t: std::time::SystemTime) -> i64 {
    Timestamp::try_from(t)
        .map(|t| t.as_millisecond())
        .unwrap_or(0)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn open_index(dir: &Path, writable: bool) -> Result<Connection> {
    let path = dir.join(layout::INDEX_FILE);
    let err = |op| {
        let path = path.clone();
        move |source| ReportError::Index { path, op, source }
    };
    let conn = Connection::open(&path).map_err(err("opening"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err("setting busy_timeout"))?;
    if writable {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "report index {}: journal_mode is {mode}, not WAL",
                path.display()
            );
        }
        // See the module doc: FULL so an acknowledged segment survives power loss too.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("setting synchronous"))?;
        // Checkpoint at ~1 MiB of WAL instead of ~4 MiB: commits are small and frequent, and a
        // smaller WAL matters on the small disks this runs on.
        conn.pragma_update(None, "wal_autocheckpoint", 256)
            .map_err(err("setting wal_autocheckpoint"))?;
    } else {
        conn.pragma_update(None, "query_only", true)
            .map_err(err("setting query_only"))?;
    }
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(err("enabling foreign keys"))?;
    // Sorting spills to memory, never to temp files on a disk that may be full.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(err("setting temp_store"))?;
    Ok(conn)
}

fn is_db_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

impl Inner {
    /// With `lock`, the store's writer; without, a reader (see [`Store::open_read_only`]).
    fn new(
        dir: &Path,
        policy: RetentionPolicy,
        lock: Option<crate::sys::fs::Lock>,
    ) -> Result<Inner> {
        let writable = lock.is_some();
        Ok(Inner {
            dir: dir.to_path_buf(),
            conn: open_index(dir, writable)?,
            policy,
            writable,
            _lock: lock,
            media_bytes: 0,
            html_bytes: 0,
            recovery: RecoveryReport::default(),
            warned: HashSet::new(),
            evicted: Evictions::default(),
            outbox_hook: None,
            outbox_ready: false,
            outbox_dropped: 0,
            old_segments: false,
        })
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(layout::INDEX_FILE)
    }

    fn db_err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> ReportError + '_ {
        move |source| ReportError::Index {
            path: self.index_path(),
            op,
            source,
        }
    }

    fn check_writable(&self, what: &'static str) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(ReportError::ReadOnly {
                path: self.dir.clone(),
                what,
            })
        }
    }

    fn warn_once(&mut self, cause: &'static str, message: String) {
        if self.warned.insert(cause) {
            log::warn!("{message} (further {cause} problems are not logged)");
        }
    }

    // ---- schema ----

    fn schema_version(&self) -> Result<i64> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.db_err("reading user_version"))
    }

    fn check_schema(&self, found: i64) -> Result<()> {
        if found > SCHEMA_VERSION {
            return Err(ReportError::SchemaTooNew {
                path: self.index_path(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let version = self.schema_version()?;
        self.check_schema(version)?;
        if version >= SCHEMA_VERSION {
            return Ok(());
        }
        let index = self.dir.join(layout::INDEX_FILE);
        let err = |op: &'static str| {
            let index = index.clone();
            move |source| ReportError::Index {
                path: index,
                op,
                source,
            }
        };
        // Rebuilding `segments` (SQLite cannot change a CHECK constraint in place) drops the old
        // table, and with foreign keys on that would first delete every media row by cascade.
        // So they are off for the rebuild — a pragma that only takes effect outside a
        // transaction — and the copy is checked with `foreign_key_check` before it commits.
        let rebuild = (1..3).contains(&version);
        if rebuild {
            self.conn
                .pragma_update(None, "foreign_keys", false)
                .map_err(err("upgrading the index to version 3"))?;
        }
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            if version == 0 {
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(SEGMENTS_V3)?;
            }
            if version < 2 {
                tx.execute_batch(alerts::ALERT_SCHEMA)?;
            }
            if rebuild {
                tx.execute_batch(&SEGMENTS_V3.replacen(
                    "CREATE TABLE segments (",
                    "CREATE TABLE segments_v3 (",
                    1,
                ))?;
                tx.execute_batch(&format!(
                    "INSERT INTO segments_v3 ({SEGMENTS_V2_COLUMNS}) \
                     SELECT {SEGMENTS_V2_COLUMNS} FROM segments;\
                     DROP TABLE segments;\
                     ALTER TABLE segments_v3 RENAME TO segments;"
                ))?;
                let broken: i64 =
                    tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                        r.get(0)
                    })?;
                if broken != 0 {
                    // Rolled back when `tx` drops: the old tables stay as they were.
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                        Some(format!(
                            "{broken} rows would break a foreign key after the rebuild"
                        )),
                    ));
                }
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()
        })();
        if rebuild {
            self.conn
                .pragma_update(None, "foreign_keys", true)
                .map_err(err("upgrading the index to version 3"))?;
        }
        result.map_err(err(if version == 0 {
            "creating the schema"
        } else {
            "upgrading the index to version 3"
        }))
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(self.db_err("integrity_check"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.db_err("integrity_check"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.db_err("integrity_check"))
    }

    fn sum_media_bytes(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COALESCE(SUM(bytes), 0) FROM media", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|b| b as u64)
            .map_err(self.db_err("summing media sizes"))
    }

    // ---- writing ----

    fn begin(&mut self, meta: &ReportMeta) -> Result<ReportId> {
        self.check_writable("starting a report")?;
        let now = Timestamp::now();
        if self.policy.max_age.is_some() {
            self.evict(now, self.policy.max_age, 0)?;
        }
        let meta_json = serde_json::to_string(meta).expect("meta serializes");
        // A random suffix makes a collision within one second unlikely; retry if it happens.
        for _ in 0..16 {
            let id = ReportId::generate(now);
            let inserted = self.conn.execute(
                "INSERT INTO reports (id, created_ms, status, trigger, meta_json) VALUES (?1, ?2, 'open', ?3, ?4)",
                params![id.as_str(), now.as_millisecond(), meta.trigger.to_string(), meta_json],
            );
            match inserted {
                Ok(_) => return Ok(id),
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => continue,
                Err(e) => {
                    return Err(self.db_failure(e, "starting a report", self.index_path(), 0))
                }
            }
        }
        unreachable!("16 random 16-bit suffixes all collided within one second")
    }

    fn add_media(
        &mut self,
        id: &ReportId,
        index: u32,
        kind: MediaKind,
        bytes: &[u8],
        row: &SegmentRow,
    ) -> Result<MediaRef> {
        self.check_writable("adding a segment")?;
        let needed = bytes.len() as u64;
        self.make_room(id, needed)?;
        let dir_rel = layout::media_dir(id);
        let rel = layout::media_path(id, index, kind);
        let path = self.dir.join(&rel);
        if let Err(e) = durable::create_dirs(&self.dir, &dir_rel) {
            return Err(self.io_failure(e, "creating", self.dir.join(&dir_rel), needed));
        }
        if let Err(e) = crate::sys::fs::write_atomic(&path, bytes) {
            return Err(self.io_failure(e, "writing", path, needed));
        }
        let media = MediaRef {
            path: rel,
            bytes: needed,
            sha256: media::sha256_hex(bytes),
        };
        match self.insert_segment(id, index, row, Some(&media), None) {
            Ok(()) => {
                self.media_bytes += needed;
                Ok(media)
            }
            Err(e) => {
                // Not acknowledged: take the file back (recovery would, as an orphan).
                let _ = fs::remove_file(&path);
                Err(self.db_failure(e, "adding a segment", self.index_path(), needed))
            }
        }
    }

    fn add_text(
        &mut self,
        id: &ReportId,
        index: u32,
        row: &SegmentRow,
        unknown: u32,
    ) -> Result<()> {
        self.check_writable("adding a segment")?;
        self.make_room(id, row.text.as_ref().map_or(0, |t| t.len() as u64))?;
        self.insert_segment(id, index, row, None, Some(unknown))
            .map_err(|e| self.db_failure(e, "adding a segment", self.index_path(), 0))
    }

    /// One transaction: the segment row, its media row, the report's byte count.
    fn insert_segment(
        &mut self,
        id: &ReportId,
        index: u32,
        row: &SegmentRow,
        media: Option<&MediaRef>,
        unknown: Option<u32>,
    ) -> rusqlite::Result<()> {
        // The foreign key refuses a segment for a report that is not in the index.
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO segments (report_id, seq, kind, text, source, at_ms, token_start, token_end,
                                   time_ms, frame_seq, width, height, sample_rate, samples, box, of_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id.as_str(), index, row.kind, row.text, row.source, row.at_ms, row.token_start,
                row.token_end, row.time_ms, row.frame_seq, row.width, row.height, row.sample_rate,
                row.samples, row.bbox, row.of_seq
            ],
        )?;
        if let Some(m) = media {
            tx.execute(
                "INSERT INTO media (report_id, seq, path, bytes, sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_str(), index, m.path, m.bytes as i64, m.sha256],
            )?;
            tx.execute(
                "UPDATE reports SET media_bytes = media_bytes + ?2 WHERE id = ?1",
                params![id.as_str(), m.bytes as i64],
            )?;
        }
        if let Some(n) = unknown.filter(|n| *n > 0) {
            tx.execute(
                "UPDATE reports SET unknown_citations = ?2 WHERE id = ?1",
                params![id.as_str(), n],
            )?;
        }
        tx.commit()
    }

    fn close(
        &mut self,
        id: &ReportId,
        status: &ReportStatus,
        stats: Option<&ReportStats>,
        unknown: u32,
        alert: Option<(&AlertMark, &AlertStateRow)>,
    ) -> Result<()> {
        self.check_writable("closing a report")?;
        let reason = match status {
            ReportStatus::Incomplete { reason } => Some(reason.as_str()),
            _ => None,
        };
        let stats_json = stats.map(|s| serde_json::to_string(s).expect("stats serialize"));
        // With an outbox, the report's messages are written in the transaction that closes it.
        // An alert's mark and state likewise.
        let queue = self.outbox_hook.is_some() || alert.is_some();
        if queue {
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                return Err(self.db_failure(e, "closing a report", self.index_path(), 0));
            }
        }
        let updated = self.conn.execute(
            "UPDATE reports SET status = ?2, reason = ?3, finished_ms = ?4, stats_json = ?5,
                                unknown_citations = ?6
             WHERE id = ?1 AND status = 'open'",
            params![
                id.as_str(),
                status.word(),
                reason,
                Timestamp::now().as_millisecond(),
                stats_json,
                unknown
            ],
        );
        let updated = match updated {
            Ok(1) if queue => alert
                .map_or(Ok(()), |(mark, state)| self.write_alert(id, mark, state))
                .and_then(|()| self.queue_report_messages(id))
                .and_then(|()| {
                    self.conn
                        .execute_batch("COMMIT")
                        .map_err(|e| self.db_failure(e, "closing a report", self.index_path(), 0))
                }),
            Ok(1) => Ok(()),
            Ok(_) => Err(ReportError::Closed {
                id: id.clone(),
                status: "no longer open (evicted?)",
            }),
            Err(e) => Err(self.db_failure(e, "closing a report", self.index_path(), 0)),
        };
        if let Err(e) = updated {
            if queue && !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(e);
        }
        // The pages about to be written take space no write asked for: make room for them
        // (within the margin) before, so the index page written next already leaves out what
        // goes.
        if let Some(max) = self.policy.max_bytes {
            let over = self
                .total_bytes()
                .saturating_sub(max.saturating_sub(BUDGET_MARGIN));
            if over > 0 {
                self.evict(Timestamp::now(), None, over)?;
            }
        }
        // Pages are derived and refreshable: failing to write one must not fail the report.
        self.write_page_logged(id);
        self.write_index_page_logged();
        Ok(())
    }

    // ---- pages ----

    fn write_file(&mut self, rel: &str, content: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        let dir_rel = rel.rsplit_once('/').map_or("", |(d, _)| d);
        let old = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let write = |root: &Path| {
            durable::create_dirs(root, dir_rel)
                .and_then(|()| crate::sys::fs::write_atomic(&path, content.as_bytes()))
        };
        let mut result = write(&self.dir);
        // Pages are not worth failing for, but worth one eviction: a report without its page is
        // only reachable from the CLI. (Only the store's writer evicts, not a CLI reader.)
        if matches!(&result, Err(e) if durable::is_disk_full(e)) && self.writable {
            let _ = self.disk_full(path.clone(), content.len() as u64);
            result = write(&self.dir);
        }
        result.map_err(|source| ReportError::Io {
            op: "writing",
            path: path.clone(),
            source,
        })?;
        self.html_bytes = self.html_bytes.saturating_sub(old) + content.len() as u64;
        Ok(path)
    }

    fn write_page(&mut self, id: &ReportId) -> Result<PathBuf> {
        let report = self.get(id)?;
        let mark = self.alert_mark(id)?;
        let media = |_: u32, m: &MediaRef| format!("{}{}", layout::PAGE_TO_STORE, m.path);
        let page =
            html::report_page_full(&report, &media, Some(layout::PAGE_TO_INDEX), mark.as_ref());
        self.write_file(&layout::page_path(id), &page)
    }

    fn write_index_page(&mut self) -> Result<PathBuf> {
        let reports = self.list(&ListFilter {
            limit: Some(INDEX_PAGE_REPORTS),
            ..Default::default()
        })?;
        let total: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
            .map_err(self.db_err("counting reports"))?;
        let page = html::index_page(&reports, total as u64, Timestamp::now());
        self.write_file(layout::INDEX_PAGE, &page)
    }

    fn write_page_logged(&mut self, id: &ReportId) -> bool {
        match self.write_page(id) {
            Ok(_) => true,
            Err(e) => {
                self.warn_once(
                    "report page",
                    format!("report {id}: writing its page failed: {e}"),
                );
                false
            }
        }
    }

    fn write_index_page_logged(&mut self) {
        if let Err(e) = self.write_index_page() {
            self.warn_once(
                "index page",
                format!(
                    "store {}: writing the index page failed: {e}",
                    self.dir.display()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_writer_can_move_to_a_blocking_thread() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<Store>();
        sync::<Store>();
        send::<ReportWriter>();
    }
}
