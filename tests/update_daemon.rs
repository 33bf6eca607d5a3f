//! A fleet update with the real daemon running: `gemba run` serves version 1 from
//! `<models>/current` and writes reports; `gemba model install` installs version 2, SIGHUPs the
//! daemon and waits for its health gate; the daemon keeps writing. Reports before the switch
//! carry the old bundle id and hash, after it the new ones, in that order — and no report is lost
//! or half-written across the switch.

mod common;
mod update_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gemba::report::{ListFilter, ReportStatus, RetentionPolicy, Store};
use update_support::Fleet;

fn reports(store_dir: &Path) -> Vec<gemba::report::Report> {
    let store = Store::open_read_only(store_dir).unwrap();
    let mut v: Vec<_> = store.list(&ListFilter::default()).unwrap().into_iter().map(|s| store.get(&s.id).unwrap()).collect();
    v.sort_by_key(|r| r.created_at);
    v
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reports_switch_bundles_cleanly_when_an_update_lands_under_the_running_daemon() {
    let fleet = Fleet::new();
    let tmp = tempfile::tempdir().unwrap();
    let (root, state, store_dir) = (tmp.path().join("models"), tmp.path().join("state"), tmp.path().join("store"));
    let out = fleet.model(&root, &state).arg("install").arg(&fleet.v1).arg("--no-daemon").output().unwrap();
    assert!(out.status.success(), "installing version 1: {}", String::from_utf8_lossy(&out.stderr));
    common::write_replay_frames(&tmp.path().join("frames"), 4);
    let cfg = tmp.path().join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
state_dir = "state"
[model]
path = "models/current"
max_new_tokens = 40
[providers]
order = ["cpu"]
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 8.0
prompt = "{}"
"#,
            update_support::PROMPT
        ),
    )
    .unwrap();
    let mut daemon = common::gemba()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("GEMBA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = || -> Option<serde_json::Value> {
        std::fs::read_to_string(state.join("status.json")).ok().and_then(|t| serde_json::from_str(&t).ok())
    };
    wait_for("the daemon serving version 1", Duration::from_secs(60), || {
        status().is_some_and(|s| s["bundle_id"] == "1" && s["ready"] == true)
    });
    wait_for("reports from version 1", Duration::from_secs(60), || store_dir.join("index.sqlite").exists() && reports(&store_dir).len() >= 5);

    // The update, through the real health gate: SIGHUP, then status.json must show version 2.
    let out = fleet
        .model(&root, &state)
        .arg("install")
        .arg(&fleet.v2)
        .args(["--health-timeout", "60s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "installing version 2 under the running daemon: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status().unwrap();
    assert_eq!(s["bundle_id"], "2");
    assert_eq!(s["smoke_ok"], true, "the daemon ran the new bundle's smoke prompt");
    let n_at_switch = reports(&store_dir).len();
    wait_for("reports from version 2", Duration::from_secs(60), || {
        reports(&store_dir).iter().filter(|r| r.meta.bundle_id == "2").count() >= 5
    });
    Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    assert!(daemon.wait().unwrap().success(), "the daemon stops cleanly");

    let store = Store::open(&store_dir, RetentionPolicy { max_bytes: None, max_age: None, min_free_bytes: 0 }).unwrap();
    let mut all = common::assert_consistent(&store);
    all.sort_by_key(|r| r.created_at);
    drop(store);
    assert!(all.len() > n_at_switch);
    let v1_hash = gemba::update::identify(&root.join("versions/1")).unwrap().hash;
    let v2_hash = gemba::update::identify(&root.join("versions/2")).unwrap().hash;
    let ids: Vec<&str> = all.iter().map(|r| r.meta.bundle_id.as_str()).collect();
    let first_v2 = ids.iter().position(|b| *b == "2").expect("reports from version 2");
    assert!(ids[..first_v2].iter().all(|b| *b == "1"), "before the switch: version 1 only: {ids:?}");
    assert!(ids[first_v2..].iter().all(|b| *b == "2"), "after the switch: version 2 only: {ids:?}");
    for r in &all {
        let want = if r.meta.bundle_id == "1" { &v1_hash } else { &v2_hash };
        assert_eq!(&r.meta.bundle_hash, want, "report {} names the exact weights", r.id);
        assert_eq!(r.status, ReportStatus::Complete, "report {} across the switch is whole", r.id);
        let text: String = r
            .segments
            .iter()
            .filter_map(|s| match s {
                gemba::report::Segment::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert!(text.contains(update_support::EXPECT), "report {} answers right: {text}", r.id);
    }
}
