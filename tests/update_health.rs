//! The health gate with a daemon (the stand-in `gemba model fake-daemon`, a real process that
//! loads `current` with the engine and answers the smoke prompt): a model that misbehaves after
//! the switch is rolled back by itself, the reason is recorded, and the daemon is brought back to
//! the old bundle. Also the happy path with the daemon, manual rollback and gc.

mod update_support;

use std::time::Duration;

use gemba::update::State;
use update_support::*;

fn hash_of(root: &std::path::Path, v: &str) -> String {
    gemba::update::identify(&root.join("versions").join(v))
        .unwrap()
        .hash
}

/// Runs an install of v2 that must be rolled back; returns the error line and checks the layout.
fn install_v2_rolled_back(
    f: &Fleet,
    root: &std::path::Path,
    state: &std::path::Path,
    extra: &[&str],
) -> (String, gemba::update::UpdateRecord) {
    let out = f
        .model(root, state)
        .arg("install")
        .args(extra)
        .arg(&f.v2)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let line = all
        .lines()
        .find(|l| l.starts_with("gemba: error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("health gate failed after switching to 2")
            && line.contains("rolled back to 1"),
        "{all}"
    );
    assert!(
        all.contains("2: switched")
            && all.contains("2: rolling-back")
            && all.contains("2: rolled-back"),
        "{all}"
    );
    assert_eq!(current(root).as_deref(), Some("1"));
    assert_eq!(installed(root), ["1"], "the rolled-back version is deleted");
    assert!(staging_empty(root));
    let r = record(root);
    assert!(matches!(r.state, State::RolledBack { .. }), "{:?}", r.state);
    (line, r)
}

#[test]
fn a_failed_health_check_after_the_switch_rolls_back_by_itself() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("fail");
    let d = FakeDaemon::start(&root, &state, &["--fail-version", "2"]);
    assert_eq!(d.status().bundle_id.as_deref(), Some("1"));
    let (line, r) = install_v2_rolled_back(&f, &root, &state, &["--health-timeout", "30s"]);
    assert!(line.contains("injected health failure on 2"), "{line}");
    let reason = r.state.reason().unwrap();
    assert!(
        reason.contains("smoke test failed on bundle")
            && reason.contains("injected health failure on 2"),
        "{reason}"
    );
    let a = r.attempt.unwrap();
    assert_eq!(
        (a.from.as_deref(), a.version.as_deref()),
        (Some("1"), Some("2"))
    );
    assert!(a.gate.unwrap().starts_with("failed: "));
    // The daemon was told to go back and confirmed it.
    assert!(
        a.note
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("serves 1 ({}) again", &hash_of(&root, "1")[..12])),
        "{:?}",
        a.note
    );
    let s = d.status();
    assert_eq!(
        (s.bundle_id.as_deref(), s.ready, s.smoke_ok),
        (Some("1"), true, Some(true))
    );
    assert_eq!(s.bundle_hash.unwrap(), hash_of(&root, "1"));
    assert_answers(&root);
    // The history shows the whole way.
    let states: Vec<String> = record(&root)
        .history
        .iter()
        .rev()
        .take(7)
        .map(|h| h.state.clone())
        .collect();
    assert_eq!(
        states,
        [
            "rolled-back",
            "rolling-back",
            "reloaded",
            "switched",
            "smoked",
            "unpacked",
            "verifying"
        ]
    );
}

#[test]
fn a_daemon_that_dies_on_the_new_model_or_ignores_the_reload_times_out_and_rolls_back() {
    let f = Fleet::new();
    // Crashes while loading v2: never reports it; the gate times out.
    let (root, state) = f.root_with_v1("crash");
    let d = FakeDaemon::start(&root, &state, &["--crash-version", "2"]);
    let (line, r) = install_v2_rolled_back(&f, &root, &state, &["--health-timeout", "2s"]);
    assert!(
        line.contains("did not report bundle")
            && line.contains("ready within 2s")
            && line.contains("(not running)"),
        "{line}"
    );
    assert!(r
        .attempt
        .unwrap()
        .note
        .unwrap()
        .contains("daemon not told to reload after the rollback"));
    drop(d);
    // systemd would restart it: it serves the old bundle.
    let d = FakeDaemon::start(&root, &state, &[]);
    assert_eq!(
        (d.status().bundle_id.as_deref(), d.status().ready),
        (Some("1"), true)
    );
    assert_answers(&root);

    // Ignores SIGHUP: stays on v1; the gate times out; v1 is what it serves anyway.
    let (root, state) = f.root_with_v1("deaf");
    let d = FakeDaemon::start(&root, &state, &["--ignore-reload"]);
    let (line, _) = install_v2_rolled_back(&f, &root, &state, &["--health-timeout", "1s"]);
    assert!(
        line.contains("ready within 1s") && line.contains("last status: pid"),
        "{line}"
    );
    assert_eq!(d.status().bundle_id.as_deref(), Some("1"));
}

#[test]
fn a_daemon_that_turns_unhealthy_during_the_hold_is_rolled_back() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("hold");
    let d = FakeDaemon::start(
        &root,
        &state,
        &["--degrade-version", "2", "--degrade-after", "300ms"],
    );
    let (line, _) = install_v2_rolled_back(
        &f,
        &root,
        &state,
        &["--health-timeout", "30s", "--health-hold", "3s"],
    );
    assert!(
        line.contains("stopped being healthy")
            && line.contains("3s hold")
            && line.contains("degraded"),
        "{line}"
    );
    d.wait(
        |s| s.bundle_id.as_deref() == Some("1") && s.ready,
        Duration::from_secs(30),
    );
    assert_answers(&root);
}

#[test]
fn without_a_running_daemon_the_install_is_refused_before_anything_changes() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("nodaemon");
    let before = record(&root);
    let out = f
        .model(&root, &state)
        .arg("install")
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && text(&out).contains("no daemon to health-check")
            && text(&out).contains("--no-daemon"),
        "{}",
        text(&out)
    );
    // A stale status.json (a pid that is not a gemba process) is no daemon either.
    std::fs::write(state.join("status.json"), r#"{"pid": 1, "bundle_dir": null, "bundle_id": null, "bundle_hash": null, "loaded_at": null, "ready": true, "smoke_ok": null, "error": null}"#).unwrap();
    let out = f
        .model(&root, &state)
        .arg("install")
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("names pid 1, which is not a running gemba"),
        "{}",
        text(&out)
    );
    assert_eq!(current(&root).as_deref(), Some("1"));
    assert_eq!(installed(&root), ["1"]);
    assert_eq!(record(&root), before);
}

#[test]
fn install_with_the_daemon_then_rollback_then_gc() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("happy");
    let d = FakeDaemon::start(&root, &state, &[]);
    let before = d.status();
    let out = f
        .model(&root, &state)
        .args(["install", "--json"])
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        o["gate"]
            .as_str()
            .unwrap()
            .starts_with(&format!("passed (daemon pid {}", d.child.id())),
        "{o}"
    );
    let after = d.status();
    assert_eq!(
        (before.bundle_id.as_deref(), after.bundle_id.as_deref()),
        (Some("1"), Some("2"))
    );
    assert_eq!(
        after.bundle_hash.as_deref(),
        Some(hash_of(&root, "2").as_str())
    );
    assert_eq!(
        after.extra["reply"].as_str().map(|r| r.contains(EXPECT)),
        Some(true)
    );

    let st = f
        .model(&root, &state)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        (
            st["current"].as_str(),
            st["previous"].as_str(),
            st["update"]["state"].as_str()
        ),
        (Some("2"), Some("1"), Some("healthy"))
    );
    assert_eq!(st["daemon"]["bundle_id"], "2");

    // Manual rollback: re-verified, smoke-tested, switched, gated.
    let out = f.model(&root, &state).arg("rollback").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(current(&root).as_deref(), Some("1"));
    assert_eq!(
        std::fs::read_link(root.join("previous")).unwrap(),
        std::path::Path::new("versions/2")
    );
    assert_eq!(d.status().bundle_id.as_deref(), Some("1"));
    let r = record(&root);
    assert_eq!(r.state, State::Healthy);
    assert_eq!(
        r.attempt.unwrap().kind,
        gemba::update::state::AttemptKind::Rollback
    );

    // A third version; then gc keeps current (3) and previous (1) and removes 2 and its cache.
    let v3 = f.path("v3.tar");
    gemba::update::pack::pack(&fp32(), &f.signing_key(), &opts("3"), &v3).unwrap();
    let out = f
        .model(&root, &state)
        .arg("install")
        .arg(&v3)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let h2 = hash_of(&root, "2");
    assert!(root.join("cache").join(&h2).is_dir());
    let out = f
        .model(&root, &state)
        .args(["gc", "--keep", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(installed(&root), ["1", "3"]);
    assert!(!root.join("cache").join(&h2).exists());
    assert_eq!(d.status().bundle_id.as_deref(), Some("3"));
    assert_answers(&root);
}
