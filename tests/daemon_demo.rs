//! The real daemon on the demo: `gemba run` with replay cameras over demo frames and the demo
//! model writes interleaved reports. Each camera shows one known scene (facts in
//! models/demo/frames/facts.json), so the test can check that
//! - the frame the model cites comes before the sentences about it, and the marker is gone;
//! - the sentences are right for the scene (lamp colour, pressure zone, boxes on the belt);
//! - the report's JSON matches its golden file (readable diff; `GEMBA_BLESS=1` rewrites it);
//! - headless Chromium opens the report pages and the index: every frame loads, the sentences
//!   appear in order.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gemba::report::{ListFilter, Report, ReportStatus, Segment, Store};

/// (camera, frame, prompt, sentences a right answer contains)
const SCENES: &[(&str, &str, &str, &[&str])] = &[
    (
        "press-2",
        "press-2_01.jpg",
        "Give me a status report.",
        &["The lamp is red.", "The pressure is too high."],
    ),
    (
        "belt-1",
        "belt-1_03.jpg",
        "How many boxes are on the belt?",
        &["There are two boxes on the belt."],
    ),
    (
        "line-3",
        "line-3_05.jpg",
        "Give me a status report.",
        &[
            "The lamp is green.",
            "The pressure is high.",
            "There are three boxes on the belt.",
        ],
    ),
];

fn config(dir: &Path) -> std::path::PathBuf {
    let demo = root().join("models/demo");
    let mut cams = String::new();
    for (name, frame, prompt, _) in SCENES {
        cams.push_str(&format!(
            "[[cameras]]\nname = \"{name}\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 1.0\nprompt = \"{prompt}\"\nmax_interval = \"1s\"\n\n",
            demo.join("frames").join(frame).display()
        ));
    }
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            "board = \"x86-dev\"\ndata_dir = \"store\"\n[model]\npath = \"{}\"\nmax_new_tokens = 200\n[providers]\norder = [\"cpu\"]\n[api]\nlisten = \"127.0.0.1:0\"\n\n{cams}",
            demo.display()
        ),
    )
    .unwrap();
    cfg
}

fn texts(r: &Report) -> Vec<String> {
    r.segments
        .iter()
        .filter_map(|s| match s {
            Segment::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

/// The parts of a report that do not change from run to run (no ids, times, hashes, sizes).
fn normalized(r: &Report) -> String {
    let segments: Vec<serde_json::Value> = r
        .segments
        .iter()
        .map(|s| match s {
            Segment::Image(i) => serde_json::json!({"kind": "image", "camera": i.camera, "width": i.width, "height": i.height}),
            Segment::Text(t) => serde_json::json!({"kind": "text", "text": t.text}),
            Segment::Audio(_) => serde_json::json!({"kind": "audio"}),
            Segment::Region(g) => serde_json::json!({"kind": "region", "camera": g.camera, "box": g.bbox}),
        })
        .collect();
    let v = serde_json::json!({
        "trigger": r.meta.trigger.to_string(),
        "prompt": r.meta.prompt,
        "cameras": r.meta.cameras,
        "status": r.status.word(),
        "segments": segments,
    });
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

#[test]
fn demo_daemon_writes_interleaved_reports_that_cite_frames_and_are_right() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let store_dir = tmp.path().join("store");
    let mut reap = Reap(
        gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("GEMBA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let daemon = &mut reap.0;
    let first_complete = |store: &Store| -> BTreeMap<String, Report> {
        let mut by_cam = BTreeMap::new();
        let mut all: Vec<Report> = store
            .list(&ListFilter::default())
            .unwrap()
            .into_iter()
            .map(|s| store.get(&s.id).unwrap())
            .collect();
        all.sort_by_key(|r| r.created_at);
        for r in all {
            if r.status == ReportStatus::Complete {
                by_cam.entry(r.meta.cameras[0].clone()).or_insert(r);
            }
        }
        by_cam
    };
    let t0 = Instant::now();
    loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the daemon exited ({st}):\n{err}");
        }
        if store_dir.join("index.sqlite").exists() {
            if let Ok(store) = Store::open_read_only(&store_dir) {
                if first_complete(&store).len() == SCENES.len() {
                    break;
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no complete report from every camera within 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(
        daemon.wait().unwrap().success(),
        "the daemon stops cleanly on SIGTERM"
    );

    let store = Store::open_read_only(&store_dir).unwrap();
    let reports = first_complete(&store);
    for (camera, _, prompt, right) in SCENES {
        let r = &reports[*camera];
        assert_eq!(r.meta.prompt.as_deref(), Some(*prompt));
        // The cited frame opens the report, before any sentence; no marker is left in the text.
        match r.segments.first() {
            Some(Segment::Image(i)) => assert_eq!(
                &i.camera, camera,
                "report {}: the first segment is {camera}'s frame",
                r.id
            ),
            other => panic!(
                "report {}: expected the cited frame first, got {other:?}",
                r.id
            ),
        }
        assert_eq!(
            r.segments
                .iter()
                .filter(|s| matches!(s, Segment::Image(_)))
                .count(),
            1
        );
        let said = texts(r);
        assert!(!said.is_empty());
        assert!(
            said.iter().all(|t| !t.contains("[cam:")),
            "markers are stripped: {said:?}"
        );
        let joined = said.join(" ");
        for sentence in *right {
            assert!(
                joined.contains(sentence),
                "report {} on {camera}: expected {sentence:?} in {joined:?}",
                r.id
            );
        }
        check_golden(&format!("demo_daemon/{camera}.json"), &normalized(r));
    }

    // In a browser: the frame and the crops of the regions its sentences cite all load, the
    // sentences appear in order; the index lists them.
    for (camera, ..) in SCENES {
        let r = &reports[*camera];
        let dom = dump_dom(&store.page_path(&r.id));
        let imgs = img_tags(&dom);
        let crops = r
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Region(_)))
            .count();
        assert_eq!(imgs.len(), 1 + crops, "{dom}");
        for img in &imgs {
            assert!(
                img.contains("data-loaded=\"yes\""),
                "an image did not load: {img}"
            );
        }
        let mut last = 0;
        for t in texts(r) {
            let at = dom[last..].find(&t).map(|p| p + last);
            last =
                at.unwrap_or_else(|| panic!("sentence {t:?} missing or out of order in the page"));
        }
    }
    let index = store.dir().join("html/index.html");
    let dom = dump_dom(&index);
    for r in reports.values() {
        assert!(
            dom.contains(r.id.as_str()),
            "the index lists report {}",
            r.id
        );
    }
}
