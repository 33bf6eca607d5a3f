//! Reports: what gemba saw and said, in the order it happened — and the store that keeps them.
//!
//! What flows in: a [`ReportMeta`] when a query starts (trigger, bundle, providers), then camera
//! [`Frame`](crate::capture::Frame)s, streamed sentences (with `[cam:NAME]` citations, see
//! [`cite`]) and [`AudioClip`](crate::capture::AudioClip)s as they arrive, then the
//! [`ReportStats`] when generation ends. What flows out: a [`Report`] — an ordered list of
//! [`Segment`]s plus metadata — readable through [`Store::get`], as a static HTML page
//! ([`html`]), as JSON ([`export_json`]) and from the command line ([`cli`]).
//!
//! The module owns the whole life of a report on disk: ids ([`ReportId`]), the media layout
//! ([`layout`]), crash-safe writes and recovery ([`store`]), retention within a disk quota
//! ([`retention`]). Every fallible operation returns [`ReportError`], which names the report, the
//! file or the store it concerns.

pub mod cite;
pub mod cli;
pub mod crop;
pub(crate) mod durable;
pub mod html;
mod id;
pub(crate) mod layout;
mod media;
pub(crate) mod retention;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize, Serializer};

pub use cli::{run_report_command, ReportCommand};
pub use id::ReportId;
pub use retention::RetentionPolicy;
pub use store::{
    Ack, AlertMark, AlertStateRow, Eviction, Evictions, ListFilter, MediaProblem, RecoveryReport,
    ReportSummary, ReportWriter, SentencePlacement, Store, Usage,
};

use crate::model::Sentence;

/// Why a report was cut off when the daemon stopped (or died) while writing it.
pub const CUT_OFF_REASON: &str = "cut off: daemon stopped before it finished";

/// What started a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The monitor looked at a camera (interval or change gate).
    Monitor { camera: String },
    /// Someone spoke to gemba.
    Voice,
    /// A request on the local HTTP API.
    Api,
    /// `gemba ask` on the command line.
    Cli,
    /// An alert rule was raised or cleared (`alert:NAME`); the report's camera is in its meta.
    Alert { rule: String },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Monitor { camera } => write!(f, "monitor:{camera}"),
            Trigger::Voice => f.write_str("voice"),
            Trigger::Api => f.write_str("api"),
            Trigger::Cli => f.write_str("cli"),
            Trigger::Alert { rule } => write!(f, "alert:{rule}"),
        }
    }
}

impl FromStr for Trigger {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Trigger, ReportError> {
        match s {
            "voice" => Ok(Trigger::Voice),
            "api" => Ok(Trigger::Api),
            "cli" => Ok(Trigger::Cli),
            _ => match s.strip_prefix("monitor:") {
                Some(camera) if !camera.is_empty() => Ok(Trigger::Monitor {
                    camera: camera.to_string(),
                }),
                _ if s.strip_prefix("alert:").is_some_and(|r| !r.is_empty()) => {
                    Ok(Trigger::Alert {
                        rule: s["alert:".len()..].to_string(),
                    })
                }
                _ => Err(ReportError::BadTrigger {
                    value: s.to_string(),
                }),
            },
        }
    }
}

impl Serialize for Trigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Trigger, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What is known about a report when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportMeta {
    pub trigger: Trigger,
    /// The question asked, where there was one in text (API, CLI, a transcribed voice query).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Cameras whose frames went into the query — the names a `[cam:NAME]` citation may use.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// The model bundle's id (its directory or manifest name).
    pub bundle_id: String,
    /// The bundle's content hash, so a report can be traced to the exact weights.
    pub bundle_hash: String,
    /// Execution provider each component actually ran on (`vision` → `cuda`, …).
    #[serde(default)]
    pub providers: BTreeMap<String, String>,
}

/// Generation figures, known when the reply ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportStats {
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub time_to_first_token_ms: Option<f64>,
    pub time_to_first_sentence_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// A spoken question's latencies (voice reports only; absent from other reports and from
    /// their golden files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceTimings>,
    /// Region markers (`[cam:NAME box:…]`) dropped as malformed, out of range or naming no
    /// camera of the query; filled in by the report writer (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_regions: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Latencies of a spoken exchange. `*_after_speech_ms` count from the moment the end of the
/// question was decided (after `end_silence_ms` of silence); `*_at_ms` are on the generation's
/// clock, like the sentences' `at_ms` and `total_ms`, so `first_audio_at_ms < total_ms` shows
/// the answer was heard while the model was still generating.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoiceTimings {
    /// The question's speech, first to last voiced window.
    pub speech_ms: f64,
    /// Silence waited after the speech before the question counted as finished.
    pub end_silence_ms: f64,
    pub request_after_speech_ms: Option<f64>,
    pub first_sentence_after_speech_ms: Option<f64>,
    pub first_audio_after_speech_ms: Option<f64>,
    pub done_after_speech_ms: Option<f64>,
    pub first_audio_at_ms: Option<f64>,
    /// The synthesizer (`espeak-ng:en-us`, `piper:…`) and the output (`default`, `file:…`).
    pub tts: String,
    pub output: String,
    pub sentences_spoken: u32,
    /// The technician spoke again and the answer was stopped.
    pub barged_in: bool,
    /// The question reached `voice.vad.max_utterance` and was cut there.
    pub capped: bool,
}

/// When a sentence became final, relative to the start of generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextTimings {
    pub at: Duration,
    /// Generated-token indices `[start, end)` of the sentence, when known.
    pub token_span: Option<(usize, usize)>,
}

impl From<&Sentence> for TextTimings {
    fn from(s: &Sentence) -> TextTimings {
        TextTimings {
            at: s.at,
            token_span: Some(s.token_span),
        }
    }
}

/// Where a report stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReportStatus {
    /// Being written now (or, before recovery, by a run that died).
    Open,
    /// `finish` was called: every segment of the reply is there.
    Complete,
    /// Cut off, aborted or damaged; the reason says which.
    Incomplete { reason: String },
}

impl ReportStatus {
    /// The status word stored in the index and printed by `gemba report list`.
    pub fn word(&self) -> &'static str {
        match self {
            ReportStatus::Open => "open",
            ReportStatus::Complete => "complete",
            ReportStatus::Incomplete { .. } => "incomplete",
        }
    }
}

impl fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportStatus::Incomplete { reason } => write!(f, "incomplete ({reason})"),
            other => f.write_str(other.word()),
        }
    }
}

/// A media file in the store. `path` is relative to the store directory, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaRef {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A camera frame placed in the report (stored as JPEG).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageSegment {
    pub index: u32,
    pub camera: String,
    /// The camera's frame sequence number.
    pub frame_seq: u64,
    #[serde(serialize_with = "ser_ts")]
    pub captured_at: Timestamp,
    pub width: u32,
    pub height: u32,
    pub media: MediaRef,
}

/// A sentence of the model's reply, citation markers removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextSegment {
    pub index: u32,
    pub text: String,
    /// Since generation started.
    #[serde(rename = "at_ms", serialize_with = "ser_ms")]
    pub at: Duration,
    pub token_span: Option<(usize, usize)>,
}

/// An audio clip (stored as 16-bit mono WAV), with its transcript when there is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioSegment {
    pub index: u32,
    pub source: String,
    #[serde(serialize_with = "ser_ts")]
    pub started_at: Timestamp,
    pub sample_rate: u32,
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
    pub transcript: Option<String>,
    pub media: MediaRef,
}

/// A region of a frame cited by the sentence just before it (`[cam:NAME box:…]`), with its
/// crop stored as its own JPEG, cut from the same pixels as the frame segment it points at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionSegment {
    pub index: u32,
    pub camera: String,
    /// The image segment (the whole frame) the region is cut from.
    pub frame_index: u32,
    /// The camera's frame sequence number.
    pub frame_seq: u64,
    /// In thousandths of the frame's width and height.
    #[serde(rename = "box")]
    pub bbox: cite::BoxK,
    /// The crop's size in pixels.
    pub width: u32,
    pub height: u32,
    pub media: MediaRef,
}

/// One step of a report, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Segment {
    Image(ImageSegment),
    Text(TextSegment),
    Audio(AudioSegment),
    Region(RegionSegment),
}

impl Segment {
    /// Position in the report (0-based; a gap means a segment was lost to damage and removed).
    pub fn index(&self) -> u32 {
        match self {
            Segment::Image(s) => s.index,
            Segment::Text(s) => s.index,
            Segment::Audio(s) => s.index,
            Segment::Region(s) => s.index,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Segment::Image(_) => "image",
            Segment::Text(_) => "text",
            Segment::Audio(_) => "audio",
            Segment::Region(_) => "region",
        }
    }

    pub fn media(&self) -> Option<&MediaRef> {
        match self {
            Segment::Image(s) => Some(&s.media),
            Segment::Audio(s) => Some(&s.media),
            Segment::Region(s) => Some(&s.media),
            Segment::Text(_) => None,
        }
    }
}

/// A whole report as read back from the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub id: ReportId,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: Timestamp,
    #[serde(serialize_with = "ser_opt_ts")]
    pub finished_at: Option<Timestamp>,
    pub status: ReportStatus,
    pub meta: ReportMeta,
    pub stats: Option<ReportStats>,
    /// `[cam:NAME]` markers naming no camera of the query (stripped from the text).
    pub unknown_citations: u32,
    pub segments: Vec<Segment>,
}

impl Report {
    /// The first sentence, for listings.
    pub fn first_sentence(&self) -> Option<&str> {
        self.segments.iter().find_map(|s| match s {
            Segment::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
    }
}

/// Version tag of the JSON export; bump it when a field changes meaning or goes away.
pub const EXPORT_FORMAT: &str = "gemba-report/1";

/// The report as pretty-printed JSON (stable field names, segments in order, media paths relative
/// to the store directory).
pub fn export_json(report: &Report) -> String {
    #[derive(Serialize)]
    struct Export<'a> {
        format: &'static str,
        #[serde(flatten)]
        report: &'a Report,
    }
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string_pretty(&Export {
        format: EXPORT_FORMAT,
        report,
    })
    .expect("report serializes")
        + "\n"
}

/// Timestamps in exports: RFC 3339, UTC, milliseconds.
fn ser_ts<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{t:.3}"))
}

fn ser_opt_ts<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_ts(t, s),
        None => s.serialize_none(),
    }
}

/// Milliseconds from nanoseconds in one division, so whole milliseconds print without float noise.
fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_nanos() as f64 / 1e6)
}

/// Everything that can go wrong in the report module, each with the report, file or store it is
/// about.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("invalid report id {id:?}: {why} (expected e.g. 20261124T101530Z-3f2a)")]
    BadId { id: String, why: &'static str },
    #[error("invalid trigger {value:?} (expected monitor:CAMERA, voice, api or cli)")]
    BadTrigger { value: String },
    #[error("report {id} not found in the store at {store}")]
    NotFound { id: ReportId, store: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory of the store is not one the store can own (a symbolic link, a file).
    #[error("report store: {0}")]
    Tree(#[from] crate::sys::tree::TreeError),
    #[error("report index {path}: {op}: {source}")]
    Index {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "disk full writing {path} ({needed} bytes); evicted {evicted} old report(s) freeing \
         {freed} bytes{hint}",
        hint = if *evicted > 0 { " — retry the write" } else { "; nothing could be evicted" }
    )]
    DiskFull {
        path: PathBuf,
        needed: u64,
        evicted: usize,
        freed: u64,
    },
    #[error(
        "report {id}: writing {needed} bytes would exceed the store quota of {quota} bytes at \
         {store}, and no finished report is left to evict"
    )]
    QuotaExceeded {
        id: ReportId,
        store: PathBuf,
        needed: u64,
        quota: u64,
    },
    #[error(
        "report {id}: {needed} bytes cannot be stored at {store}: more than {limit} allows even \
         with every finished report evicted ({room} bytes); nothing was evicted"
    )]
    TooLarge {
        id: ReportId,
        store: PathBuf,
        needed: u64,
        room: u64,
        limit: &'static str,
    },
    #[error("report store {path} is in use by another gemba process (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("report store {path} was opened read-only ({what} needs the daemon's store)")]
    ReadOnly { path: PathBuf, what: &'static str },
    #[error("no report store at {path} (no index.sqlite there)")]
    NoStore { path: PathBuf },
    #[error(
        "report store {path} has schema version {found}; this gemba knows up to {known} \
         (written by a newer gemba?)"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("report {id}: row for segment {index} in {path} is damaged: {why}")]
    BadRow {
        id: ReportId,
        index: u32,
        path: PathBuf,
        why: String,
    },
    #[error("report {id}: frame from camera {camera:?} is unusable: {why}")]
    BadFrame {
        id: ReportId,
        camera: String,
        why: String,
    },
    #[error("report {id}: audio clip from {clip_source:?} is unusable: {why}")]
    BadAudio {
        id: ReportId,
        clip_source: String,
        why: String,
    },
    #[error("report {id}: encoding segment {index} as JPEG: {source}")]
    Jpeg {
        id: ReportId,
        index: u32,
        source: image::ImageError,
    },
    #[error("report {id}: encoding segment {index} as WAV: {source}")]
    Wav {
        id: ReportId,
        index: u32,
        source: hound::Error,
    },
    #[error("report {id} is {status}; nothing more can be written to it")]
    Closed { id: ReportId, status: &'static str },
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;
