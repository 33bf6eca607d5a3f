//! Region citations through the real daemon on the demo model: `gemba run` with a replay camera
//! over a demo frame, `POST /ask` naming the camera. The answer's words are held by a choice
//! constraint to a status report that cites the lamp and the gauge with the rectangles the scene
//! renderer drew (models/demo/frames/facts.json, `regions`): the demo model does not write region
//! markers by itself yet (models/demo/README.md, "Version 3"), so this checks gemba's path —
//! the model's real tokens through the stream, the writer, the store, the API and the page —
//! not the model's skill. It shows:
//! - the sentence events carry the regions, the text stays clean;
//! - the report: frame, sentence, its region, sentence, its region; each crop its own JPEG with
//!   the pixels of the stored frame under the box;
//! - headless Chromium on the report page: every image loads, each crop follows its sentence,
//!   each box is drawn over the frame where it was cited.

mod api_common;
mod common;

use std::time::{Duration, Instant};

use api_common::*;
use serde_json::{json, Value};

const FRAME: &str = "press-2_00.jpg";

/// The drawn rectangle of `object` on the demo frame `file`, in thousandths.
fn drawn(file: &str, object: &str) -> [u16; 4] {
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/demo/frames/facts.json")).unwrap(),
    )
    .unwrap();
    let f = facts
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file)
        .unwrap();
    let r: Vec<u16> = f["regions"][object]
        .as_array()
        .unwrap_or_else(|| panic!("facts.json: no {object} region for {file}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u16)
        .collect();
    [r[0], r[1], r[2], r[3]]
}

fn marker(b: [u16; 4]) -> String {
    format!("[cam:press-2 box:{},{},{},{}]", b[0], b[1], b[2], b[3])
}

fn rgb_of(jpeg: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .unwrap()
        .to_rgb8()
}

#[test]
fn a_reports_regions_are_stored_drawn_and_shown_beside_their_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let frame = root().join("models/demo/frames").join(FRAME);
    let cfg = dir.path().join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{}"
max_new_tokens = 120
[providers]
order = ["cpu"]
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-2"
kind = "replay"
source = "{}"
fps = 2.0
monitor = false
prompt = "Give me a status report."
"#,
            root().join("models/demo").display(),
            frame.display()
        ),
    )
    .unwrap();
    let store_dir = dir.path().join("store");
    let d = Daemon::start_config(dir, &cfg);

    let (lamp, gauge) = (drawn(FRAME, "lamp"), drawn(FRAME, "gauge"));
    let answer = format!(
        "[cam:press-2] The lamp {} is amber. The pressure {} is normal.",
        marker(lamp),
        marker(gauge)
    );
    let body = json!({
        "text": "Give me a status report.",
        "cameras": ["press-2"],
        "response_format": {"type": "choice", "choices": [answer]},
    });
    // The replay camera's first frame may not be there yet (503 with Retry-After).
    let t0 = Instant::now();
    let id = loop {
        let (code, v) = d.post_json("/ask", &body);
        if code == 202 {
            break v["report_id"].as_str().unwrap().to_string();
        }
        assert!(
            code == 503 && t0.elapsed() < Duration::from_secs(60),
            "POST /ask: {code} {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // The live sentences: clean text, the regions beside it.
    let events = d.events(&id, None);
    let sentences: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "sentence")
        .map(|e| &e.data)
        .collect();
    let k = |b: [u16; 4]| json!({"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]});
    assert_eq!(sentences.len(), 2, "{events:?}");
    assert_eq!(
        sentences[0]["regions"],
        json!([{"camera": "press-2", "box": k(lamp)}])
    );
    assert_eq!(
        sentences[1]["regions"],
        json!([{"camera": "press-2", "box": k(gauge)}])
    );

    // The report: frame, sentence, its region, sentence, its region.
    let (code, report) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(code, 200, "{report}");
    let segs = report["segments"].as_array().unwrap();
    let kinds: Vec<&str> = segs.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["image", "text", "region", "text", "region"],
        "{report}"
    );
    assert_eq!(segs[1]["text"], "The lamp is amber.");
    assert_eq!(segs[3]["text"], "The pressure is normal.");
    assert_eq!(
        (segs[2]["box"].clone(), segs[4]["box"].clone()),
        (k(lamp), k(gauge))
    );
    // Each crop is its own JPEG, the stored frame's pixels under its box.
    let (code, _, frame_jpeg) = d.get_bytes(&format!("/reports/{id}/media/0"));
    assert_eq!(code, 200);
    let full = rgb_of(&frame_jpeg);
    for (n, b) in [(2, lamp), (4, gauge)] {
        assert_eq!(segs[n]["frame_index"], 0);
        let (code, ctype, crop_jpeg) = d.get_bytes(&format!("/reports/{id}/media/{n}"));
        assert_eq!((code, ctype.as_str()), (200, "image/jpeg"));
        let crop = rgb_of(&crop_jpeg);
        let (x, y) = (
            u32::from(b[0]) * full.width() / 1000,
            u32::from(b[1]) * full.height() / 1000,
        );
        let (w, h) = (
            u32::from(b[2]) * full.width() / 1000 - x,
            u32::from(b[3]) * full.height() / 1000 - y,
        );
        assert_eq!((crop.width(), crop.height()), (w, h), "crop {n}'s size");
        assert_eq!(
            (segs[n]["width"].as_u64(), segs[n]["height"].as_u64()),
            (Some(u64::from(w)), Some(u64::from(h)))
        );
        let mut diff = 0u64;
        for (cx, cy, p) in crop.enumerate_pixels() {
            let q = full.get_pixel(x + cx, y + cy);
            diff += (0..3).map(|c| u64::from(p[c].abs_diff(q[c]))).sum::<u64>();
        }
        let mean = diff as f64 / f64::from(w * h * 3);
        assert!(
            mean < 8.0,
            "crop {n} differs from the frame under its box by {mean:.1} per channel"
        );
    }

    // The page in Chromium: every image loads, crops follow their sentences, boxes sit where
    // they were cited.
    let store = gemba::report::Store::open_read_only(&store_dir).unwrap();
    let rid = gemba::report::ReportId::parse(&id).unwrap();
    let dom = common::dump_dom(&store.page_path(&rid));
    let imgs = common::img_tags(&dom);
    assert_eq!(imgs.len(), 3, "the frame and two crops: {dom}");
    assert!(
        imgs.iter().all(|t| t.contains("data-loaded=\"yes\"")),
        "{imgs:?}"
    );
    let lamp_at = dom.find("The lamp is amber.").unwrap();
    let lamp_crop = dom.find("data-kind=\"region\" data-index=\"2\"").unwrap();
    let gauge_at = dom.find("The pressure is normal.").unwrap();
    let gauge_crop = dom.find("data-kind=\"region\" data-index=\"4\"").unwrap();
    assert!(
        lamp_at < lamp_crop && lamp_crop < gauge_at && gauge_at < gauge_crop,
        "each crop right after its sentence"
    );
    let drawn_at = common::attr_values(&dom, "data-drawn");
    assert_eq!(drawn_at.len(), 2, "{dom}");
    for (d, b) in drawn_at.iter().zip([lamp, gauge]) {
        let d: Vec<i64> = d.split(',').map(|v| v.parse().unwrap()).collect();
        assert!(
            d.iter().zip(b).all(|(a, c)| (a - i64::from(c)).abs() <= 5),
            "box drawn at {d:?}, cited {b:?}"
        );
    }
}
