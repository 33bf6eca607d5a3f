//! Region citations in the report store: well-formed regions come back from the writer with
//! their sentence, malformed ones leave the text and are counted in the report's stats (never
//! an error, never a broken report).

mod common;

use common::{assert_consistent, at, frame, meta};
use gemba::report::cite::{BoxK, Region};
use gemba::report::cli::run_report_command_to;
use gemba::report::{ReportCommand, ReportStats, RetentionPolicy, Segment, Store, Trigger};

#[test]
fn regions_are_returned_and_bad_boxes_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    let frames = [frame("press-2", 64, 48, 1), frame("belt", 64, 48, 2)];
    let mut w = store
        .begin(meta(Trigger::Api, &["press-2", "belt"]))
        .unwrap();
    let p1 = w
        .add_sentence(
            "The lamp [cam:press-2 box:100,200,300,400] is amber.",
            at(800),
            &frames,
        )
        .unwrap();
    assert_eq!(
        p1.regions,
        vec![Region {
            camera: "press-2".into(),
            bbox: BoxK {
                x0: 100,
                y0: 200,
                x1: 300,
                y1: 400
            }
        }]
    );
    assert_eq!(
        p1.images.len(),
        1,
        "the cited frame is placed before the sentence"
    );
    let p2 = w
        .add_sentence(
            "Bad [cam:belt box:500,0,100,10] and [cam:roof box:1,2,3,4] and \
             [cam:belt box:1,2,3,x] boxes.",
            at(900),
            &frames,
        )
        .unwrap();
    assert!(p2.regions.is_empty() && p2.images.is_empty());
    assert_eq!(w.dropped_regions(), 3);
    let id = w
        .finish(ReportStats {
            prompt_tokens: 10,
            generated_tokens: 4,
            ..Default::default()
        })
        .unwrap();
    let r = store.get(&id).unwrap();
    assert_eq!(r.stats.as_ref().unwrap().dropped_regions, 3);
    let texts: Vec<&str> = r
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["The lamp is amber.", "Bad and and boxes."]);
    assert_consistent(&store);
    drop(store);
    let mut out = Vec::new();
    run_report_command_to(
        tmp.path(),
        ReportCommand::Show { id: id.to_string() },
        &mut out,
    )
    .unwrap();
    let show = String::from_utf8(out).unwrap();
    assert!(
        show.contains("3 region citation(s) dropped"),
        "report show counts the drops: {show}"
    );
}

/// A 200×100 frame: dark grey, with a red block at x 40..80, y 20..60 and a blue block at
/// x 120..180, y 50..90 (so a crop's colour says where it was cut from).
fn blocks_frame(camera: &str) -> gemba::capture::Frame {
    let (w, h) = (200u32, 100u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let px = if (40..80).contains(&x) && (20..60).contains(&y) {
                [220, 20, 20]
            } else if (120..180).contains(&x) && (50..90).contains(&y) {
                [20, 20, 220]
            } else {
                [60, 60, 60]
            };
            rgb.extend_from_slice(&px);
        }
    }
    let mut f = frame(camera, w, h, 7);
    f.rgb = std::sync::Arc::new(rgb);
    f
}

fn mean_rgb(jpeg: &[u8]) -> (u32, u32, [f64; 3]) {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .expect("the crop is a JPEG")
        .to_rgb8();
    let n = f64::from(img.width() * img.height());
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    (img.width(), img.height(), sum.map(|s| s / n))
}

/// Each cited region becomes a segment right after its sentence, holding its crop as its own
/// JPEG cut from the frame; the page draws the boxes over the frame and shows each crop beside
/// its sentence; the JSON export carries the boxes.
#[test]
fn regions_become_crop_segments_after_their_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    let frames = [blocks_frame("press-2"), frame("belt", 64, 48, 2)];
    let mut w = store
        .begin(meta(Trigger::Api, &["press-2", "belt"]))
        .unwrap();
    // red block: x 40..80 of 200 = 200..400, y 20..60 of 100 = 200..600
    let p1 = w
        .add_sentence(
            "[cam:press-2] The lamp [cam:press-2 box:200,200,400,600] is red.",
            at(500),
            &frames,
        )
        .unwrap();
    let p2 = w
        .add_sentence("The belt is running.", at(700), &frames)
        .unwrap();
    // blue block: x 120..180 = 600..900, y 50..90 = 500..900; and the belt's frame, cited
    // for the first time by a region marker alone
    let p3 = w
        .add_sentence(
            "Two parts [cam:press-2 box:600,500,900,900] [cam:belt box:0,0,500,500] wait.",
            at(900),
            &frames,
        )
        .unwrap();
    assert_eq!((p1.images.len(), p1.crops.len()), (1, 1));
    assert!(p2.crops.is_empty() && p2.regions.is_empty());
    assert_eq!(
        (p3.images.len(), p3.crops.len()),
        (1, 2),
        "belt's frame placed before the sentence, two crops after it"
    );
    let id = w.finish(ReportStats::default()).unwrap();
    let r = store.get(&id).unwrap();
    let kinds: Vec<&str> = r.segments.iter().map(|s| s.kind()).collect();
    assert_eq!(
        kinds,
        ["image", "text", "region", "text", "image", "text", "region", "region"]
    );
    let regions: Vec<&gemba::report::RegionSegment> = r
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Region(g) => Some(g),
            _ => None,
        })
        .collect();
    let want = [
        (
            "press-2",
            0,
            BoxK {
                x0: 200,
                y0: 200,
                x1: 400,
                y1: 600,
            },
            (40, 40),
        ),
        (
            "press-2",
            0,
            BoxK {
                x0: 600,
                y0: 500,
                x1: 900,
                y1: 900,
            },
            (60, 40),
        ),
        (
            "belt",
            4,
            BoxK {
                x0: 0,
                y0: 0,
                x1: 500,
                y1: 500,
            },
            (32, 24),
        ),
    ];
    for (g, (camera, frame_index, bbox, size)) in regions.iter().zip(want) {
        assert_eq!(
            (
                g.camera.as_str(),
                g.frame_index,
                g.bbox,
                (g.width, g.height)
            ),
            (camera, frame_index, bbox, size)
        );
        let bytes = std::fs::read(store.media_path(&g.media)).unwrap();
        assert_eq!(bytes.len() as u64, g.media.bytes);
        let (w, h, _) = mean_rgb(&bytes);
        assert_eq!((w, h), size, "the crop's own JPEG has the box's size");
    }
    // The crops hold what the boxes cover: the red block, then the blue one.
    let red = mean_rgb(&std::fs::read(store.media_path(&regions[0].media)).unwrap()).2;
    let blue = mean_rgb(&std::fs::read(store.media_path(&regions[1].media)).unwrap()).2;
    assert!(red[0] > 180.0 && red[2] < 60.0, "red crop: {red:?}");
    assert!(blue[2] > 180.0 && blue[0] < 60.0, "blue crop: {blue:?}");
    assert_ne!(regions[0].media.path, r.segments[0].media().unwrap().path);

    // JSON export: region segments with their boxes.
    let json = serde_json::to_value(&r).unwrap();
    let seg = &json["segments"][2];
    assert_eq!(seg["kind"], "region");
    assert_eq!(
        seg["box"],
        serde_json::json!({"x0": 200, "y0": 200, "x1": 400, "y1": 600})
    );
    assert_eq!(seg["frame_index"], 0);

    // The page: boxes drawn over each frame, each crop in its sentence's row.
    let page = std::fs::read_to_string(store.page_path(&id)).unwrap();
    let frame0 = &page[page.find("data-index=\"0\"").unwrap()..];
    let frame0 = &frame0[..frame0.find("</figure>").unwrap()];
    assert!(
        frame0.contains("data-region=\"2\"")
            && frame0.contains("left:20.0%;top:20.0%;width:20.0%;height:40.0%")
            && frame0.contains("data-region=\"6\"")
            && frame0.contains("left:60.0%;top:50.0%;width:30.0%;height:40.0%"),
        "both press-2 boxes drawn on its frame: {frame0}"
    );
    let rows: Vec<&str> = page.split("<div class=\"sentence-row\">").skip(1).collect();
    assert_eq!(rows.len(), 2, "two sentences cite regions");
    assert!(
        rows[0].contains("The lamp is red.")
            && rows[0].contains("data-kind=\"region\" data-index=\"2\"")
    );
    let (s, c) = rows[1].split_at(rows[1].find("data-kind=\"region\"").unwrap());
    assert!(s.contains("Two parts wait."));
    assert!(
        c.find("data-index=\"6\"").unwrap() < c.find("data-index=\"7\"").unwrap(),
        "crops in citation order"
    );
    assert_consistent(&store);
}

/// An index written by the previous version (schema 2: no region segments) is upgraded in
/// place on open: every report, segment and media file is kept, and regions can be added.
#[test]
fn a_version_2_index_is_upgraded_keeping_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = [frame("press-2", 64, 48, 1)];
    let (id, before) = {
        let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
        let mut w = store.begin(meta(Trigger::Api, &["press-2"])).unwrap();
        w.add_audio(&common::clip(0.5, 3), Some("is it red"))
            .unwrap();
        w.add_sentence("[cam:press-2] The lamp is red.", at(100), &frames)
            .unwrap();
        let id = w.finish(ReportStats::default()).unwrap();
        let r = store.get(&id).unwrap();
        (id, r)
    };
    // Turn the index back into version 2's: the segments table as it was.
    {
        let db = rusqlite::Connection::open(tmp.path().join("index.sqlite")).unwrap();
        db.execute_batch(
            "PRAGMA foreign_keys = OFF;
             BEGIN;
             CREATE TABLE segments_v2 (
                 report_id TEXT NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
                 seq INTEGER NOT NULL,
                 kind TEXT NOT NULL CHECK (kind IN ('image', 'text', 'audio')),
                 text TEXT, source TEXT, at_ms REAL, token_start INTEGER, token_end INTEGER,
                 time_ms INTEGER, frame_seq INTEGER, width INTEGER, height INTEGER,
                 sample_rate INTEGER, samples INTEGER,
                 PRIMARY KEY (report_id, seq)) WITHOUT ROWID;
             INSERT INTO segments_v2 SELECT report_id, seq, kind, text, source, at_ms, token_start,
                 token_end, time_ms, frame_seq, width, height, sample_rate, samples FROM segments;
             DROP TABLE segments;
             ALTER TABLE segments_v2 RENAME TO segments;
             PRAGMA user_version = 2;
             COMMIT;",
        )
        .unwrap();
        let media: i64 = db
            .query_row("SELECT COUNT(*) FROM media", [], |r| r.get(0))
            .unwrap();
        assert_eq!(media, 2, "the downgrade kept the media rows");
    }
    // Read beside an older daemon: the old table reads fine.
    let ro = Store::open_read_only(tmp.path()).unwrap();
    assert_eq!(ro.get(&id).unwrap(), before);
    drop(ro);
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    assert!(store.recovery().is_clean(), "{:?}", store.recovery());
    assert_eq!(
        store.get(&id).unwrap(),
        before,
        "the report survives the upgrade"
    );
    let db = rusqlite::Connection::open(tmp.path().join("index.sqlite")).unwrap();
    let (version, media): (i64, i64) = db
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), (SELECT COUNT(*) FROM media)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, media), (3, 2), "version 3, media rows all kept");
    drop(db);
    let mut w = store.begin(meta(Trigger::Api, &["press-2"])).unwrap();
    let p = w
        .add_sentence(
            "The lamp [cam:press-2 box:0,0,500,500] is red.",
            at(50),
            &frames,
        )
        .unwrap();
    assert_eq!(p.crops.len(), 1);
    w.finish(ReportStats::default()).unwrap();
    assert_consistent(&store);
}
