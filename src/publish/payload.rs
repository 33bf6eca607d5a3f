//! The JSON payloads gemba publishes (docs/mqtt.md shows each with an example). Every message
//! carries an `id` for de-duplication: delivery is at least once.

use serde_json::{json, Value};

use crate::report::{Report, ReportStatus, Segment};

/// Version of these payloads; bumped when a field changes meaning or goes away.
pub const FORMAT: &str = "gemba-mqtt/1";

/// `<prefix>/reports`: one per closed report (complete or incomplete).
pub fn report(r: &Report, board_id: &str) -> Value {
    let sentences: Vec<&str> = r
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    let (status, reason) = match &r.status {
        ReportStatus::Incomplete { reason } => ("incomplete", Some(reason.as_str())),
        s => (s.word(), None),
    };
    let camera = match &r.meta.trigger {
        crate::report::Trigger::Monitor { camera } => Some(camera.clone()),
        _ => r.meta.cameras.first().cloned(),
    };
    json!({
        "format": FORMAT,
        "id": r.id.as_str(),
        "board": board_id,
        "created_at": format!("{:.3}", r.created_at),
        "finished_at": r.finished_at.map(|t| format!("{t:.3}")),
        "trigger": r.meta.trigger.to_string(),
        "camera": camera,
        "cameras": r.meta.cameras,
        "prompt": r.meta.prompt,
        "status": status,
        "reason": reason,
        "sentences": sentences,
        "answer": sentences.join(" "),
        "bundle_id": r.meta.bundle_id,
        "bundle_hash": r.meta.bundle_hash,
        "api_path": format!("/reports/{}", r.id.as_str()),
        "html_path": format!("/reports/{}.html", r.id.as_str()),
    })
}

/// `<prefix>/sentences`: one live sentence of an answer in progress (QoS 0, not stored).
pub fn sentence(report_id: &str, s: &crate::model::Sentence, board_id: &str) -> Value {
    json!({
        "format": FORMAT,
        "id": format!("{report_id}/{}", s.index),
        "board": board_id,
        "report_id": report_id,
        "index": s.index,
        // Citation markers out, as in the report.
        "text": crate::report::cite::cite(&s.text, &[] as &[&str]).text,
    })
}

/// What the status message says about the board, besides online/offline.
#[derive(Debug, Clone, Default)]
pub struct BoardFacts {
    pub board_id: String,
    pub site: String,
    pub bundle_id: String,
    pub bundle_hash: String,
    pub bundle_version: Option<String>,
    pub providers: std::collections::BTreeMap<String, String>,
    pub cameras: Vec<Value>,
    pub health: Value,
    pub reports: u64,
    pub last_report_at: Option<String>,
    pub outbox_pending: u64,
    pub outbox_dropped: u64,
    /// Alert rules raised (or clearing) now.
    pub alerts_raised: u64,
}

/// `<prefix>/status`: the retained birth message, refreshed while connected; the last will is
/// the same with `"state": "offline"` (what was known when the connection was made).
pub fn status(f: &BoardFacts, online: bool, at: jiff::Timestamp) -> Value {
    json!({
        "format": FORMAT,
        "id": format!("{}/status/{}", f.board_id, at.as_millisecond()),
        "state": if online { "online" } else { "offline" },
        "online": online,
        "board": f.board_id,
        "site": f.site,
        "at": format!("{at:.3}"),
        "gemba_version": env!("CARGO_PKG_VERSION"),
        "bundle": { "id": f.bundle_id, "hash": f.bundle_hash, "version": f.bundle_version },
        "providers": f.providers,
        "cameras": f.cameras,
        "health": f.health,
        "reports": f.reports,
        "last_report_at": f.last_report_at,
        "alerts_raised": f.alerts_raised,
        "outbox": { "pending": f.outbox_pending, "dropped": f.outbox_dropped },
    })
}
