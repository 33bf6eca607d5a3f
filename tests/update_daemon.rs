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

use common::Reap;
use gemba::report::{ListFilter, ReportStatus, RetentionPolicy, Store};
use gemba::update::manifest::SmokeSpec;
use update_support::Fleet;

fn reports(store_dir: &Path) -> Vec<gemba::report::Report> {
    let store = Store::open_read_only(store_dir).unwrap();
    let mut v: Vec<_> = store
        .list(&ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| store.get(&s.id).unwrap())
        .collect();
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

/// One fleet update under the running daemon: version 1 serves and reports, version 2 lands
/// through the real health gate, the daemon keeps reporting. Every report must hold `expect`.
struct Scenario<'a> {
    fleet: Fleet,
    /// Writes the replay camera's frames into the given directory.
    frames: &'a dyn Fn(&Path),
    camera: &'a str,
    prompt: &'a str,
    /// Extra camera settings (e.g. `max_interval` for a scene that never changes).
    camera_extra: &'a str,
    expect: &'a str,
}

#[test]
fn reports_switch_bundles_cleanly_when_an_update_lands_under_the_running_daemon() {
    run(Scenario {
        fleet: Fleet::new(),
        frames: &|dir| common::write_replay_frames(dir, 4),
        camera: "press-1",
        prompt: update_support::PROMPT,
        camera_extra: "",
        expect: update_support::EXPECT,
    });
}

/// The same with the demo bundle (models/demo): a new version of the omni model lands while the
/// daemon reports on the demo camera; every report, before and after, is right about the scene.
#[test]
fn a_new_version_of_the_demo_bundle_lands_under_the_running_daemon() {
    let demo = common::root().join("models/demo");
    let tmp = tempfile::tempdir().unwrap();
    let (v1_dir, v2_dir) = (tmp.path().join("demo-v1"), tmp.path().join("demo-v2"));
    common::copy_bundle(&demo, &v1_dir);
    common::copy_bundle(&demo, &v2_dir);
    // Version 2 differs in its files too (a longer answer limit), not only in its manifest.
    let cfg = v2_dir.join("genai_config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["search"]["max_length"] = serde_json::json!(c["search"]["max_length"].as_u64().unwrap() - 1);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let smoke = SmokeSpec {
        prompt: "What colour is the lamp?".into(),
        expect_contains: "camera image".into(),
        system: None,
        max_tokens: 32,
    };
    let fleet = Fleet::with(&v1_dir, &v2_dir, Some(smoke));
    let frame = demo.join("frames/press-2_00.jpg");
    run(Scenario {
        fleet,
        frames: &|dir| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(&frame, dir.join("press-2_00.jpg")).unwrap();
        },
        camera: "press-2",
        prompt: "What colour is the lamp?",
        camera_extra: "max_interval = \"1s\"",
        expect: "The lamp is amber.",
    });
}

fn run(sc: Scenario) {
    let fleet = &sc.fleet;
    let tmp = tempfile::tempdir().unwrap();
    let (root, state, store_dir) = (
        tmp.path().join("models"),
        tmp.path().join("state"),
        tmp.path().join("store"),
    );
    let out = fleet
        .model(&root, &state)
        .arg("install")
        .arg(&fleet.v1)
        .arg("--no-daemon")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "installing version 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sc.frames)(&tmp.path().join("frames"));
    let cfg = tmp.path().join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
state_dir = "state"
[model]
path = "models/current"
max_new_tokens = 120
[providers]
order = ["cpu"]
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "{}"
kind = "replay"
source = "frames"
fps = 8.0
prompt = "{}"
{}
"#,
            sc.camera, sc.prompt, sc.camera_extra
        ),
    )
    .unwrap();
    let mut daemon = Reap(
        common::gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("GEMBA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = || -> Option<serde_json::Value> {
        std::fs::read_to_string(state.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    };
    wait_for(
        "the daemon serving version 1",
        Duration::from_secs(60),
        || status().is_some_and(|s| s["bundle_id"] == "1" && s["ready"] == true),
    );
    wait_for("reports from version 1", Duration::from_secs(60), || {
        store_dir.join("index.sqlite").exists() && reports(&store_dir).len() >= 5
    });

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
    assert_eq!(
        s["smoke_ok"], true,
        "the daemon ran the new bundle's smoke prompt"
    );
    let n_at_switch = reports(&store_dir).len();
    wait_for("reports from version 2", Duration::from_secs(60), || {
        reports(&store_dir)
            .iter()
            .filter(|r| r.meta.bundle_id == "2")
            .count()
            >= 5
    });
    Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        daemon.0.wait().unwrap().success(),
        "the daemon stops cleanly"
    );

    let store = Store::open(
        &store_dir,
        RetentionPolicy {
            max_bytes: None,
            max_age: None,
            min_free_bytes: 0,
        },
    )
    .unwrap();
    let mut all = common::assert_consistent(&store);
    all.sort_by_key(|r| r.created_at);
    drop(store);
    assert!(all.len() > n_at_switch);
    let v1_hash = gemba::update::identify(&root.join("versions/1"))
        .unwrap()
        .hash;
    let v2_hash = gemba::update::identify(&root.join("versions/2"))
        .unwrap()
        .hash;
    let ids: Vec<&str> = all.iter().map(|r| r.meta.bundle_id.as_str()).collect();
    let first_v2 = ids
        .iter()
        .position(|b| *b == "2")
        .expect("reports from version 2");
    assert!(
        ids[..first_v2].iter().all(|b| *b == "1"),
        "before the switch: version 1 only: {ids:?}"
    );
    assert!(
        ids[first_v2..].iter().all(|b| *b == "2"),
        "after the switch: version 2 only: {ids:?}"
    );
    for r in &all {
        let want = if r.meta.bundle_id == "1" {
            &v1_hash
        } else {
            &v2_hash
        };
        assert_eq!(
            &r.meta.bundle_hash, want,
            "report {} names the exact weights",
            r.id
        );
        assert_eq!(
            r.status,
            ReportStatus::Complete,
            "report {} across the switch is whole",
            r.id
        );
        let text: String = r
            .segments
            .iter()
            .filter_map(|s| match s {
                gemba::report::Segment::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains(sc.expect),
            "report {} answers right: {text}",
            r.id
        );
    }
}
