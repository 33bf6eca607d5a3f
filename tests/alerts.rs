//! Alert rules with the real binary and a real store:
//! - `gemba config check` refuses bad rules (an invalid schema, a `when` naming a field the
//!   schema lacks or comparing a field to a value of the wrong type or an enum value the schema
//!   lacks, an unsatisfiable schema, an unknown severity, duplicate names) naming the config
//!   file, the camera and the rule — and start-up refuses them the same way;
//! - a rule's state and the report of its raise, written by the store in one transaction,
//!   survive kill -9 of the writer and are what a daemon started on that store shows at
//!   `GET /alerts` and in `gemba_alert_state`;
//! - `GET /alerts/events` is an event stream that ends when the daemon stops.

mod api_common;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use api_common::{Daemon, SseEvent};
use gemba::report::{AlertMark, AlertStateRow, ReportStats, RetentionPolicy, Store, Trigger};

use api_common::LAMP_RULE as LAMP;

fn config(dir: &Path, rules: &str) -> std::path::PathBuf {
    common::write_replay_frames(&dir.join("frames"), 4);
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 16
[providers]
order = ["cpu"]
intra_op_threads = 1
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 2.0
monitor = false
{rules}"#,
            model = api_common::tiny_model().display()
        ),
    )
    .unwrap();
    cfg
}

fn check(cfg: &Path) -> (Option<i32>, String) {
    let out = common::gemba()
        .args(["config", "check"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_check_refuses_bad_rules_naming_the_file_camera_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), LAMP);
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(0), "the demo rule is valid: {err}");

    let second = LAMP
        .replace("lamp-red", "lamp-amber")
        .replace("\"red\"'", "\"amber\"'");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            LAMP.replace("enum = [", "enumm = ["),
            "cameras[0].alerts[0].schema",
            "invalid schema: schema.properties.lamp: unknown keyword \"enumm\"",
        ),
        (
            LAMP.replace("type = \"object\"", "type = \"objet\""),
            "cameras[0].alerts[0].schema",
            "is not a JSON type",
        ),
        (
            LAMP.replace("lamp == \"red\"", "colour == \"red\""),
            "cameras[0].alerts[0].when",
            "the schema has no field colour",
        ),
        (
            LAMP.replace("lamp == \"red\"", "lamp == \"purple\""),
            "cameras[0].alerts[0].when",
            "lamp is never \"purple\"",
        ),
        (
            LAMP.replace("lamp == \"red\"", "lamp > 2"),
            "cameras[0].alerts[0].when",
            "lamp is a string but 2 is a number",
        ),
        (
            LAMP.replace(
                "{ enum = [\"green\", \"amber\", \"red\", \"off\", \"none\"] }",
                "{ type = \"integer\", minimum = 5, maximum = 1 }",
            )
            .replace("lamp == \"red\"", "lamp == 3"),
            "cameras[0].alerts[0].schema",
            "no answer can satisfy the schema",
        ),
        (
            LAMP.replace("\"critical\"", "\"urgent\""),
            "cameras[0].alerts[0].severity",
            "\"urgent\" is not a severity (info, warning, critical)",
        ),
        (
            format!("{LAMP}{}", LAMP.replace("critical", "info")),
            "cameras[0].alerts[1].name",
            "another rule of this camera has the same name",
        ),
        (
            LAMP.replace("when = 'lamp == \"red\"'", "when = 'lamp == \"red\" and'"),
            "cameras[0].alerts[0].when",
            "ends too early",
        ),
        (
            "[[cameras.alerts]]\nname = \"fence\"\nquestion = \"Is anyone inside the fence?\"\nwhen = \"maybe\"\n".into(),
            "cameras[0].alerts[0].when",
            "without a schema, when must be \"yes\" or \"no\"",
        ),
    ];
    // Two different rules are fine.
    let cfg = config(dir.path(), &format!("{LAMP}{second}"));
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(0), "{err}");
    for (rules, key, what) in &cases {
        let cfg = config(dir.path(), rules);
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(1), "{rules}\n{err}");
        let rule = if rules.contains("fence") {
            "fence"
        } else {
            "lamp-red"
        };
        let want = format!(
            "{}: {key}: camera \"press-1\", rule \"{rule}\": ",
            cfg.display()
        );
        assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
        assert!(err.contains(what), "wanted {what:?} in:\n{err}");
    }
    // Start-up validates with the same code: `gemba run` refuses the last one before loading.
    let cfg = config(dir.path(), &cases[6].0);
    let out = common::gemba()
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cameras[0].alerts[0].severity: camera \"press-1\", rule \"lamp-red\""),
        "{err}"
    );
}

fn frame() -> gemba::capture::Frame {
    common::frame("press-1", 64, 48, 7)
}

fn row(state: &str, streak: u32, since_ms: i64) -> AlertStateRow {
    AlertStateRow {
        camera: "press-1".into(),
        rule: "lamp-red".into(),
        state: state.into(),
        streak,
        severity: "critical".into(),
        since_ms,
        updated_ms: since_ms,
        last_answer: Some(r#"{"lamp":"red"}"#.into()),
        report_id: None,
    }
}

/// Writes a raise (the report, its mark and the rule's state in one transaction) into the store
/// at `store_dir`; returns the report id.
fn raise(store_dir: &Path) -> String {
    let store = Store::open(store_dir, RetentionPolicy::default()).unwrap();
    store.put_alert_state(&row("pending", 1, 1_000)).unwrap();
    let mut w = store
        .begin(common::meta(
            Trigger::Alert {
                rule: "lamp-red".into(),
            },
            &["press-1"],
        ))
        .unwrap();
    w.add_image(&frame()).unwrap();
    w.add_text(r#"{"lamp": "red"}"#, common::at(5)).unwrap();
    let mark = AlertMark {
        camera: "press-1".into(),
        rule: "lamp-red".into(),
        kind: "raise".into(),
        severity: "critical".into(),
        state: "raised".into(),
        answer: r#"{"lamp":"red"}"#.into(),
    };
    let id = w
        .finish_alert(ReportStats::default(), &mark, &row("raised", 0, 2_000))
        .unwrap();
    id.as_str().to_string()
}

#[test]
fn a_raised_state_survives_kill_9_and_shows_at_get_alerts_and_in_metrics() {
    // The writer: this test binary again, in a child process killed with SIGKILL once the
    // raise is acknowledged (nothing is closed or flushed after that).
    if let Some(dir) = std::env::var_os("GEMBA_ALERTS_WRITE") {
        println!("REPORT {}", raise(Path::new(&dir)));
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), LAMP);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_raised_state_survives_kill_9_and_shows_at_get_alerts_and_in_metrics",
            "--nocapture",
        ])
        .env("GEMBA_ALERTS_WRITE", dir.path().join("store"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("REPORT ").map(String::from))
        .expect("the writer printed its report");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let d = Daemon::start_config(dir, &cfg);
    let (code, v) = d.get_json("/alerts");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1, "{v}");
    let a = &v["alerts"][0];
    assert_eq!(a["camera"], "press-1");
    assert_eq!(a["rule"], "lamp-red");
    assert_eq!(a["state"], "raised", "{v}");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["since_ms"], 2_000);
    assert_eq!(a["since"], "1970-01-01T00:00:02.000Z");
    assert_eq!(a["last_answer"], serde_json::json!({"lamp": "red"}));
    assert_eq!(a["report_id"], id.as_str());
    assert_eq!(v["raised"], 1);
    // The report of the raise: its frame and answer, found by its trigger.
    let (code, r) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["meta"]["trigger"], "alert:lamp-red", "{r}");
    let kinds: Vec<&str> = r["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image", "text"], "{r}");
    let (code, list) = d.get_json("/reports?trigger=alert:lamp-red");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["reports"][0]["id"], id.as_str(), "{list}");
    let (code, m) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        m.contains("gemba_alert_state{camera=\"press-1\",rule=\"lamp-red\"} 2"),
        "{m}"
    );
    // The page of the raise shows it as an alert: severity, state, the answer.
    let (code, page) = d.get(&format!("/reports/{id}.html"));
    assert_eq!(code, 200);
    assert!(page.contains("class=\"alert severity-critical\""), "{page}");
    assert!(page.contains("raised"), "{page}");
    assert!(
        page.contains("<pre class=\"answer\" title=\"the structured answer\">{\n  &quot;lamp&quot;: &quot;red&quot;\n}</pre>"),
        "{page}"
    );
}

#[test]
fn alert_events_is_an_event_stream_that_ends_with_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), LAMP);
    let mut d = Daemon::start_config(dir, &cfg);
    let (code, v) = d.get_json("/alerts");
    assert_eq!(code, 200);
    assert_eq!(v["alerts"][0]["state"], "ok", "{v}");
    assert_eq!(v["alerts"][0]["report_id"], serde_json::Value::Null);
    // The board's own routes: the camera's latest frame as JPEG, the page with no external asset.
    let (code, ctype, jpeg) = d.get_bytes("/cameras/press-1/frame");
    assert_eq!((code, ctype.as_str()), (200, "image/jpeg"));
    let img = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));
    let (code, v) = d.get_json("/cameras/nope/frame");
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    let (code, page) = d.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>gemba board</title>"));
    for external in ["http://", "https://", "//cdn", "@import"] {
        assert!(
            !page.contains(external),
            "the board must work offline: {external}"
        );
    }
    let r = d.agent.get(d.url("/alerts/events")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap().to_str().unwrap(),
        "text/event-stream"
    );
    let reader = std::thread::spawn(move || {
        let body = r.into_body().into_reader();
        api_common::read_sse(BufReader::new(body))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stop().success());
    let events: Vec<SseEvent> = reader.join().unwrap();
    // No look ran (the camera is not monitored): no change, and the stream ended.
    assert!(events.iter().all(|e| e.event != "alert"), "{events:?}");
}

/// An alert look asks each rule on the same frame: the vision encoder runs once, and the answers
/// are the same as from an engine that encoded the frame afresh.
#[test]
fn rules_on_one_frame_encode_the_image_once_with_the_same_answers() {
    use gemba::daemon::worker::AskInput;
    use gemba::model::providers::ProviderPolicy;
    use gemba::model::{runtime, CancelToken, Engine, Event};
    let rt = runtime::init(None).expect("ONNX Runtime (run scripts/setup test)");
    let load = || {
        Engine::load(
            rt,
            &common::root().join("models/demo"),
            &ProviderPolicy::default(),
        )
        .unwrap()
    };
    let img = image::open(common::root().join("models/demo/frames/press-2_01.jpg"))
        .unwrap()
        .to_rgb8();
    let frame = gemba::capture::Frame {
        camera: "press-2".into(),
        seq: 1,
        captured_at: std::time::SystemTime::UNIX_EPOCH,
        width: img.width(),
        height: img.height(),
        rgb: std::sync::Arc::new(img.into_raw()),
    };
    let ask = |e: &mut Engine, q: &str| {
        let mut params = e.default_params();
        params.max_new_tokens = Some(24);
        let input = AskInput {
            text: q.into(),
            frames: vec![frame.clone()],
            audio: Vec::new(),
        };
        let mut text = String::new();
        e.ask(&input, None, &params, &CancelToken::new(), &mut |ev| {
            if let Event::Done(d) = ev {
                text = d.text;
            }
        })
        .unwrap();
        text
    };
    let mut e = load();
    let a1 = ask(&mut e, "What colour is the status lamp?");
    let a2 = ask(&mut e, "Is the pressure gauge in the red zone?");
    let mm = e.multimodal.as_ref().unwrap();
    assert_eq!((mm.vision_runs, mm.vision_reused), (1, 1));
    // … and it is resized and normalised once.
    let p = &mm.processor;
    let counts = |p: &gemba::media::processor::Phi4mmProcessor| {
        use std::sync::atomic::Ordering::Relaxed;
        (
            p.images_processed.load(Relaxed),
            p.images_reused.load(Relaxed),
        )
    };
    assert_eq!(counts(p), (1, 1));
    let mut fresh = load();
    assert_eq!(
        ask(&mut fresh, "Is the pressure gauge in the red zone?"),
        a2
    );
    assert!(!a1.is_empty() && !a2.is_empty());
    // Another frame is encoded again.
    let mut other = frame.clone();
    std::sync::Arc::make_mut(&mut other.rgb)[0] ^= 0xff;
    let mut params = e.default_params();
    params.max_new_tokens = Some(4);
    let input = AskInput {
        text: "What colour is the status lamp?".into(),
        frames: vec![other],
        audio: Vec::new(),
    };
    e.ask(&input, None, &params, &CancelToken::new(), &mut |_| {})
        .unwrap();
    let mm = e.multimodal.as_ref().unwrap();
    assert_eq!(mm.vision_runs, 2);
    assert_eq!(counts(&mm.processor), (2, 1));
}
