//! Golden files for what a person or a program reads: the HTML page, the JSON export, the `show`
//! text and the index page of a fixed report (fixed ids and timestamps, no store involved).
//! On a mismatch the test prints a unified diff; `GEMBA_BLESS=1 cargo test --test report_golden`
//! rewrites the files after an intended change (review the diff in git).

mod common;
use std::time::Duration;

use gemba::report::cite::BoxK;
use gemba::report::cli::{list_table, show_text};
use gemba::report::{
    export_json, html, AudioSegment, ImageSegment, MediaRef, RegionSegment, Report, ReportId,
    ReportMeta, ReportStats, ReportStatus, ReportSummary, Segment, TextSegment, Trigger,
};
use jiff::Timestamp;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn fixed_report() -> Report {
    let id = ReportId::parse("20261124T101530Z-3f2a").unwrap();
    let media = |n: u32, ext: &str, bytes: u64, sha: char| MediaRef {
        path: format!("media/2026/11/24/{id}/{n}.{ext}"),
        bytes,
        sha256: sha.to_string().repeat(64),
    };
    Report {
        id: id.clone(),
        created_at: ts("2026-11-24T10:15:30.120Z"),
        finished_at: Some(ts("2026-11-24T10:15:34.615Z")),
        status: ReportStatus::Complete,
        meta: ReportMeta {
            trigger: Trigger::Voice,
            prompt: Some("Is the guard on press 2 closed?".into()),
            cameras: vec!["press-2".into(), "belt".into()],
            bundle_id: "gemba-omni-small".into(),
            bundle_hash: "sha256:9f2c4e".into(),
            providers: [("speech", "cpu"), ("text", "cuda"), ("vision", "tensorrt")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        },
        stats: Some(ReportStats {
            prompt_tokens: 812,
            generated_tokens: 54,
            time_to_first_token_ms: Some(212.4),
            time_to_first_sentence_ms: Some(841.0),
            total_ms: Some(3105.5),
            tokens_per_s: Some(18.24),
            voice: None,
            dropped_regions: 0,
        }),
        unknown_citations: 1,
        segments: vec![
            Segment::Audio(AudioSegment {
                index: 0,
                source: "mic-1".into(),
                started_at: ts("2026-11-24T10:15:27.500Z"),
                sample_rate: 16_000,
                duration: Duration::from_millis(2_400),
                transcript: Some("is the guard on press 2 closed".into()),
                media: media(0, "wav", 76_844, 'a'),
            }),
            Segment::Image(ImageSegment {
                index: 1,
                camera: "press-2".into(),
                frame_seq: 48_213,
                captured_at: ts("2026-11-24T10:15:29.812Z"),
                width: 640,
                height: 480,
                media: media(1, "jpg", 51_377, 'b'),
            }),
            Segment::Text(TextSegment {
                index: 2,
                text: "The guard on press 2 is open.".into(),
                at: Duration::from_millis(841),
                token_span: Some((0, 9)),
            }),
            Segment::Region(RegionSegment {
                index: 3,
                camera: "press-2".into(),
                frame_index: 1,
                frame_seq: 48_213,
                bbox: BoxK {
                    x0: 412,
                    y0: 180,
                    x1: 655,
                    y1: 540,
                },
                width: 156,
                height: 173,
                media: media(3, "jpg", 6_120, 'd'),
            }),
            Segment::Image(ImageSegment {
                index: 4,
                camera: "belt".into(),
                frame_seq: 7_730,
                captured_at: ts("2026-11-24T10:15:29.790Z"),
                width: 320,
                height: 240,
                media: media(4, "jpg", 20_950, 'c'),
            }),
            Segment::Text(TextSegment {
                index: 5,
                text: "An operator is <1 m> from it & the belt is stopped.".into(),
                at: Duration::from_millis(1_630),
                token_span: Some((9, 24)),
            }),
            Segment::Text(TextSegment {
                index: 6,
                text: "Close the guard before restarting.".into(),
                at: Duration::from_millis(2_280),
                token_span: None,
            }),
        ],
    }
}

fn summaries(r: &Report) -> Vec<ReportSummary> {
    vec![
        ReportSummary {
            id: ReportId::parse("20261124T101610Z-0b1c").unwrap(),
            created_at: ts("2026-11-24T10:16:10.004Z"),
            trigger: "monitor:belt".into(),
            status: ReportStatus::Open,
            segments: 2,
            first_sentence: Some("The belt is moving again.".into()),
            media_bytes: 20_000,
            first_image: None,
            first_image_path: None,
        },
        ReportSummary {
            id: ReportId::parse("20261124T101545Z-77e0").unwrap(),
            created_at: ts("2026-11-24T10:15:45.300Z"),
            trigger: "api".into(),
            status: ReportStatus::Incomplete {
                reason: gemba::report::CUT_OFF_REASON.into(),
            },
            segments: 1,
            first_sentence: None,
            media_bytes: 0,
            first_image: None,
            first_image_path: None,
        },
        ReportSummary {
            id: r.id.clone(),
            created_at: r.created_at,
            trigger: r.meta.trigger.to_string(),
            status: r.status.clone(),
            segments: r.segments.len() as u32,
            first_sentence: r.first_sentence().map(str::to_string),
            media_bytes: 149_171,
            first_image: r.segments.iter().find_map(|s| match s {
                gemba::report::Segment::Image(i) => Some(i.index),
                _ => None,
            }),
            first_image_path: r.segments.iter().find_map(|s| match s {
                gemba::report::Segment::Image(i) => Some(i.media.path.clone()),
                _ => None,
            }),
        },
    ]
}

fn check(name: &str, actual: &str) {
    common::check_golden(name, actual)
}

#[test]
fn report_page_matches_golden() {
    check("report.html", &html::report_page(&fixed_report()));
}

#[test]
fn incomplete_report_page_matches_golden() {
    let mut r = fixed_report();
    r.status = ReportStatus::Incomplete {
        reason: gemba::report::CUT_OFF_REASON.into(),
    };
    r.finished_at = None;
    r.stats = None;
    r.segments.truncate(3);
    check("report-incomplete.html", &html::report_page(&r));
}

#[test]
fn json_export_matches_golden() {
    check("report.json", &export_json(&fixed_report()));
}

#[test]
fn show_text_matches_golden() {
    check("report.txt", &show_text(&fixed_report()));
}

#[test]
fn index_page_and_list_match_golden() {
    let r = fixed_report();
    check(
        "index.html",
        &html::index_page(&summaries(&r), 5, ts("2026-11-24T10:20:00Z")),
    );
    check("list.txt", &list_table(&summaries(&r)));
}
