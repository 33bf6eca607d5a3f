//! The JSON payloads gemba publishes (docs/mqtt.md shows each with an example). Every message
//! carries an `id` for de-duplication: delivery is at least once.

use serde_json::{json, Value};

use crate::report::{Report, ReportStatus, Segment};

/// Version of these payloads; bumped when a field changes meaning or goes away.
pub const FORMAT: &str = "gemba-mqtt/1";

/// `<prefix>/reports`: one per closed report (complete or incomplete).
pub fn report(r: &Report, board_id: &str) -> Value {
    let mut sentences: Vec<&str> = Vec::new();
    // Each region with the sentence it follows (the one that cites it) and its crop's address.
    let mut regions: Vec<Value> = Vec::new();
    for s in &r.segments {
        match s {
            Segment::Text(t) => sentences.push(t.text.as_str()),
            Segment::Region(g) => regions.push(json!({
                "sentence": sentences.len().checked_sub(1),
                "camera": g.camera,
                "box": g.bbox,
                "frame_seq": g.frame_seq,
                "crop_path": format!("/reports/{}/media/{}", r.id.as_str(), g.index),
            })),
            _ => {}
        }
    }
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
        "regions": regions,
        "bundle_id": r.meta.bundle_id,
        "bundle_hash": r.meta.bundle_hash,
        "api_path": format!("/reports/{}", r.id.as_str()),
        "html_path": format!("/reports/{}.html", r.id.as_str()),
    })
}

/// `<prefix>/sentences`: one live sentence of an answer in progress (QoS 0, not stored).
/// `cameras`: the query's cameras, the names its region markers may use.
pub fn sentence(
    report_id: &str,
    s: &crate::model::Sentence,
    cameras: &[String],
    board_id: &str,
) -> Value {
    // Citation markers out, as in the report; the regions they cite beside the text.
    let cited = crate::report::cite::cite(&s.text, cameras);
    json!({
        "format": FORMAT,
        "id": format!("{report_id}/{}", s.index),
        "board": board_id,
        "report_id": report_id,
        "index": s.index,
        "text": cited.text,
        "regions": cited.regions,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::cite::BoxK;
    use crate::report::{
        ImageSegment, MediaRef, RegionSegment, ReportId, ReportMeta, TextSegment, Trigger,
    };

    fn media(path: &str) -> MediaRef {
        MediaRef {
            path: path.into(),
            bytes: 10,
            sha256: "00".into(),
        }
    }

    #[test]
    fn report_carries_each_region_with_its_sentence_and_crop() {
        let t = jiff::Timestamp::from_second(1_795_000_000).unwrap();
        let text = |index, s: &str| {
            Segment::Text(TextSegment {
                index,
                text: s.into(),
                at: std::time::Duration::ZERO,
                token_span: None,
            })
        };
        let region = |index, x0| {
            Segment::Region(RegionSegment {
                index,
                camera: "belt".into(),
                frame_index: 0,
                frame_seq: 9,
                bbox: BoxK {
                    x0,
                    y0: 400,
                    x1: x0 + 100,
                    y1: 500,
                },
                width: 32,
                height: 12,
                media: media("m"),
            })
        };
        let r = Report {
            id: ReportId::parse("20261205T034253Z-cc89").unwrap(),
            created_at: t,
            finished_at: Some(t),
            status: ReportStatus::Complete,
            meta: ReportMeta {
                trigger: Trigger::Monitor {
                    camera: "belt".into(),
                },
                prompt: None,
                cameras: vec!["belt".into()],
                bundle_id: "demo".into(),
                bundle_hash: "h".into(),
                providers: Default::default(),
            },
            stats: None,
            unknown_citations: 0,
            segments: vec![
                Segment::Image(ImageSegment {
                    index: 0,
                    camera: "belt".into(),
                    frame_seq: 9,
                    captured_at: t,
                    width: 320,
                    height: 120,
                    media: media("f"),
                }),
                text(1, "The lamp is green."),
                text(2, "There are two boxes on the belt."),
                region(3, 100),
                region(4, 600),
            ],
        };
        let p = report(&r, "b1");
        assert_eq!(p["sentences"][1], "There are two boxes on the belt.");
        let regions = p["regions"].as_array().unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!(
            regions[1],
            json!({"sentence": 1, "camera": "belt", "box": {"x0": 600, "y0": 400, "x1": 700, "y1": 500},
                   "frame_seq": 9, "crop_path": "/reports/20261205T034253Z-cc89/media/4"})
        );
    }

    #[test]
    fn live_sentence_carries_its_regions_and_clean_text() {
        let s = crate::model::Sentence {
            index: 2,
            text: "The lamp [cam:press-2 box:10,20,30,40] is red [cam:roof box:1,2,3,4].".into(),
            token_span: (0, 9),
            at: std::time::Duration::ZERO,
        };
        let p = sentence("r1", &s, &["press-2".to_string()], "b1");
        assert_eq!(p["text"], "The lamp is red.");
        assert_eq!(
            p["regions"],
            json!([{"camera": "press-2", "box": {"x0": 10, "y0": 20, "x1": 30, "y1": 40}}])
        );
    }
}
