//! The alert engine on the demo model, end to end: a replay camera over tests/fixtures/alert_lamp
//! (press-1's lamp green ×3 → red ×4 → green ×4), the rule `lamp-red` (raise_after 2,
//! clear_after 3) decided by the demo model's constrained answers.
//! - Phase 1 plays the green and red frames: the rule goes ok → pending → raised on the second
//!   red look, and the raise is a report with its frame and answer. Then kill -9.
//! - Phase 2 restarts the daemon on the same store over the green frames that follow: the state
//!   is still raised before any look, then clears on the third green look.
//!
//! Over both: exactly one raise and one clear, `GET /alerts` agrees with the event stream after
//! each phase, each transition names the frame it was decided on.

mod api_common;
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api_common::{Daemon, SseEvent};

/// The fixture's frames `from..to` (by index), with each frame's lamp colour.
fn frames(dir: &Path, from: usize, to: usize) -> Vec<String> {
    let fixture = common::root().join("tests/fixtures/alert_lamp");
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("facts.json")).unwrap())
            .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut lamps = Vec::new();
    for f in &facts.as_array().unwrap()[from..to] {
        let name = f["file"].as_str().unwrap();
        std::fs::copy(fixture.join(name), dir.join(name)).unwrap();
        lamps.push(f["lamp"].as_str().unwrap().to_string());
    }
    lamps
}

/// A config over `frames` (played once, one frame every two seconds, every frame looked at).
fn config(dir: &Path, frames: &str) -> PathBuf {
    let cfg = dir.join(format!("gemba-{frames}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 24
[providers]
order = ["cpu"]
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-1"
kind = "replay"
source = "{frames}"
loop = false
fps = 0.5
change_threshold = 0.0
prompt = "What colour is the status lamp?"
{rule}"#,
            model = common::root().join("models/demo").display(),
            rule = api_common::LAMP_RULE.replace("clear_after = 2", "clear_after = 3"),
        ),
    )
    .unwrap();
    cfg
}

/// Follows `/alerts/events` in a thread until the stream ends (the daemon stops or is killed:
/// then the chunked body ends short, an error that ends the reading). No timeout on the agent.
fn follow(d: &Daemon) -> std::thread::JoinHandle<Vec<SseEvent>> {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let r = agent.get(d.url("/alerts/events")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut event = String::new();
        for line in BufReader::new(r.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                out.push(SseEvent {
                    id: None,
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(data.trim()).unwrap(),
                });
            }
        }
        out
    })
}

fn alert(d: &Daemon) -> serde_json::Value {
    let (code, v) = d.get_json("/alerts");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1, "{v}");
    v["alerts"][0].clone()
}

fn wait_state(d: &Daemon, state: &str, limit: Duration) -> serde_json::Value {
    let end = Instant::now() + limit;
    loop {
        let a = alert(d);
        if a["state"] == state {
            return a;
        }
        assert!(
            Instant::now() < end,
            "lamp-red not {state} within {limit:?}: {a}; stderr:\n{}",
            d.stderr.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// press-1's published frame count in `/status` (its `frames` counter, wherever it sits).
fn frames_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(o) if o.get("name").is_some_and(|n| n == "press-1") => {
            o.get("frames").and_then(|f| f.as_u64())
        }
        serde_json::Value::Object(o) => o.values().find_map(frames_of),
        serde_json::Value::Array(a) => a.iter().find_map(frames_of),
        _ => None,
    }
}

/// Waits until the replay camera has published `n` frames (`/status`).
fn wait_frames(d: &Daemon, n: u64, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let (code, v) = d.get_json("/status");
        assert_eq!(code, 200, "{v}");
        if frames_of(&v).is_some_and(|f| f >= n) {
            return;
        }
        assert!(
            Instant::now() < end,
            "fewer than {n} frames in {limit:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The transitions among the stream's events: (from, to, kind, frame_seq, report_id).
fn transitions(events: &[SseEvent]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.event == "alert")
        .map(|e| e.data.clone())
        .collect()
}

/// The report of a raise or a clear: trigger, its frame and its answer.
fn check_report(d: &Daemon, id: &str, lamp: &str) {
    let (code, r) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["meta"]["trigger"], "alert:lamp-red", "{r}");
    let segs = r["segments"].as_array().unwrap();
    assert_eq!(segs[0]["kind"], "image", "{r}");
    assert_eq!(segs[0]["camera"], "press-1", "{r}");
    let text = segs
        .iter()
        .find(|s| s["kind"] == "text")
        .unwrap_or_else(|| panic!("no answer in {r}"));
    let answer: serde_json::Value = serde_json::from_str(text["text"].as_str().unwrap()).unwrap();
    assert_eq!(answer, serde_json::json!({ "lamp": lamp }), "{r}");
}

#[test]
fn lamp_green_red_green_raises_once_and_clears_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let first = frames(&dir.path().join("first"), 0, 7);
    let then = frames(&dir.path().join("then"), 7, 11);
    assert_eq!(
        first,
        ["green", "green", "green", "red", "red", "red", "red"]
    );
    assert!(then.iter().all(|l| l == "green"), "{then:?}");
    let cfg1 = config(dir.path(), "first");
    let cfg2 = config(dir.path(), "then");

    // Phase 1: green → red. Raised on the second red look (frame 5, seq 5: replay numbers its
    // frames from 1), pending on the first.
    let mut d = Daemon::start_config(dir, &cfg1);
    let stream = follow(&d);
    let raised = wait_state(&d, "raised", Duration::from_secs(300));
    // The rest of the red frames change nothing; then kill -9.
    // The last red frame, and time for its look.
    wait_frames(&d, 7, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(6));
    let before_kill = alert(&d);
    assert_eq!(before_kill["state"], "raised", "{before_kill}");
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let events1 = transitions(&stream.join().unwrap());
    let kinds: Vec<(&str, &str)> = events1
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("ok", "pending"), ("pending", "raised")],
        "{events1:?}"
    );
    let (pending, raise) = (&events1[0], &events1[1]);
    assert_eq!(pending["answer"], serde_json::json!({"lamp": "red"}));
    assert_eq!(raise["answer"], serde_json::json!({"lamp": "red"}));
    assert_eq!(raise["kind"], "raise");
    let (p_seq, r_seq) = (
        pending["frame_seq"].as_u64().unwrap(),
        raise["frame_seq"].as_u64().unwrap(),
    );
    assert_eq!(first[p_seq as usize - 1], "red", "pending on {p_seq}");
    assert_eq!(first[r_seq as usize - 1], "red", "raised on {r_seq}");
    assert_eq!(r_seq, p_seq + 1, "raise_after = 2: the next look raises");
    let raise_report = raise["report_id"].as_str().unwrap().to_string();
    assert_eq!(raised["report_id"], raise_report.as_str());
    assert_eq!(before_kill["report_id"], raise_report.as_str());

    // Phase 2: the same store after kill -9, the green frames that follow.
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    drop(d);
    let mut d = Daemon::start_config(dir, &cfg2);
    let stream = follow(&d);
    let after = alert(&d);
    assert!(
        after["state"] == "raised" || after["state"] == "clearing",
        "raised survives kill -9: {after}"
    );
    assert_eq!(after["report_id"], raise_report.as_str());
    check_report(&d, &raise_report, "red");
    let cleared = wait_state(&d, "ok", Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(6));
    assert!(d.stop().success());
    let events2 = transitions(&stream.join().unwrap());
    let kinds: Vec<(&str, &str)> = events2
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("raised", "clearing"), ("clearing", "ok")],
        "{events2:?}"
    );
    let (clearing, clear) = (&events2[0], &events2[1]);
    assert_eq!(clear["kind"], "clear");
    assert_eq!(clear["answer"], serde_json::json!({"lamp": "green"}));
    let (c_seq, k_seq) = (
        clearing["frame_seq"].as_u64().unwrap(),
        clear["frame_seq"].as_u64().unwrap(),
    );
    assert_eq!(
        k_seq,
        c_seq + 2,
        "clear_after = 3: the third green look clears"
    );
    let clear_report = clear["report_id"].as_str().unwrap().to_string();
    assert_eq!(cleared["report_id"], clear_report.as_str());

    // Exactly one raise and one clear over both runs, each a report with its frame.
    let store = gemba::report::Store::open_read_only(d.dir.path().join("store")).unwrap();
    let alerts = store
        .list(&gemba::report::ListFilter {
            trigger: Some("alert:lamp-red".into()),
            ..Default::default()
        })
        .unwrap();
    let mut ids: Vec<String> = alerts.iter().map(|r| r.id.as_str().to_string()).collect();
    ids.sort();
    let mut want = vec![raise_report.clone(), clear_report.clone()];
    want.sort();
    assert_eq!(ids, want);
    drop(store);
    let d = Daemon::start_config(
        std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()),
        &cfg2,
    );
    check_report(&d, &clear_report, "green");
}
