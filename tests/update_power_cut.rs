//! Power cuts: the installer is killed with SIGKILL right after it persists each state in turn
//! (and inside the two-link switch and mid-unpack), the daemon dies with it, and then the board
//! "boots": `gemba model recover` (the daemon's ExecStartPre) runs, and a daemon starts. Exactly
//! one bundle must be active — the old one unless the new one had passed its health gate —
//! `current` must resolve to a complete version whose every file matches its signed manifest,
//! no temp link or staging leftover may remain, and the daemon must serve.

mod update_support;

use std::time::Duration;

use gemba::update::State;
use update_support::*;

/// (where the installer dies, daemon flags during the install, the version that must be active)
const POINTS: &[(&str, &[&str], &str)] = &[
    ("verifying", &[], "1"),
    ("unpacking", &[], "1"),
    ("unpacked", &[], "1"),
    ("smoked", &[], "1"),
    ("previous-tmp-linked", &[], "1"),
    ("current-tmp-linked", &[], "1"),
    ("switched", &[], "1"),
    ("reloaded", &[], "1"),
    ("healthy", &[], "2"),
    // A failing health gate, killed during and after its rollback.
    ("rolling-back", &["--fail-version", "2"], "1"),
    ("rolled-back", &["--fail-version", "2"], "1"),
];

#[test]
fn a_power_cut_at_every_transition_leaves_exactly_one_working_bundle() {
    let f = Fleet::new();
    let mut failures = Vec::new();
    for (point, daemon_flags, want) in POINTS {
        if let Err(e) = cut_at(&f, point, daemon_flags, want) {
            failures.push(format!("{point}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn cut_at(f: &Fleet, point: &str, daemon_flags: &[&str], want: &str) -> Result<(), String> {
    let (root, state) = f.root_with_v1(point);
    let mut d = FakeDaemon::start(&root, &state, daemon_flags);
    let mut install = f.model(&root, &state);
    install
        .args(["install", "--health-timeout", "30s"])
        .arg(&f.v2);
    kill_at(install, point);
    d.kill(); // the cut takes the daemon down too

    // Boot: ExecStartPre=gemba model recover.
    let out = f
        .model(&root, &state)
        .args(["recover", "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!("recover failed: {}", text(&out)));
    }
    let rep: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    let mut errs = Vec::new();
    if current(&root).as_deref() != Some(want) {
        errs.push(format!(
            "current is {:?}, want {want}; recover said {rep}",
            current(&root)
        ));
    }
    // The layout before the attempt comes back exactly (v1 had no previous), without the
    // last-resort repair of a dangling `current` having to step in.
    let previous = std::fs::read_link(root.join("previous"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let want_previous = if want == "2" {
        Some("versions/1".to_string())
    } else {
        None
    };
    if previous != want_previous {
        errs.push(format!("previous is {previous:?}, want {want_previous:?}"));
    }
    if rep.to_string().contains("incomplete or missing") {
        errs.push(format!("recover had to repair current: {rep}"));
    }
    let want_installed: &[&str] = if want == "2" { &["1", "2"] } else { &["1"] };
    if installed(&root) != want_installed {
        errs.push(format!("versions/ holds {:?}", installed(&root)));
    }
    for leftover in ["current.tmp", "previous.tmp"] {
        if std::fs::symlink_metadata(root.join(leftover)).is_ok() {
            errs.push(format!("{leftover} left behind"));
        }
    }
    if !staging_empty(&root) {
        errs.push("staging/ not empty".into());
    }
    let r = record(&root);
    match (&r.state, want) {
        (State::Healthy, "2") => {}
        (State::Rejected { reason } | State::RolledBack { reason }, "1") => {
            let expect = match point {
                "rolling-back" => "rollback finished by recovery",
                "rolled-back" => "injected health failure",
                p if p.ends_with("-linked") => "interrupted at smoked",
                "unpacking" => "interrupted at verifying",
                p => p,
            };
            if !reason.contains(expect) {
                errs.push(format!("recorded reason {reason:?} lacks {expect:?}"));
            }
        }
        (s, _) => errs.push(format!("recorded state {s}")),
    }
    // Every file of the active version matches its signed manifest.
    let listed = f
        .model(&root, &state)
        .args(["list", "--verify"])
        .output()
        .unwrap();
    if !listed.status.success() {
        errs.push(format!("list --verify: {}", text(&listed)));
    }
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    // The daemon starts and serves the active bundle.
    let hash = gemba::update::identify(&root.join("current")).unwrap().hash;
    let d = FakeDaemon::start(&root, &state, &[]);
    let s = d.wait(|s| s.loaded_at.is_some(), Duration::from_secs(30));
    if !(s.ready
        && s.smoke_ok == Some(true)
        && s.bundle_id.as_deref() == Some(want)
        && s.bundle_hash.as_deref() == Some(hash.as_str()))
    {
        return Err(format!("daemon after the cut: {s:?}"));
    }
    assert_answers(&root);
    Ok(())
}

#[test]
fn recover_repairs_a_current_that_points_at_nothing() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("repair");
    let out = f
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Someone deletes the active version by hand.
    std::fs::remove_dir_all(root.join("versions/2")).unwrap();
    let out = f.model(&root, &state).arg("recover").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("current pointed at 2, which is incomplete or missing; now points at 1"),
        "{}",
        text(&out)
    );
    assert_eq!(current(&root).as_deref(), Some("1"));
    assert_answers(&root);
    // Nothing to do the second time.
    let out = f.model(&root, &state).arg("recover").output().unwrap();
    assert!(text(&out).contains("nothing to recover"), "{}", text(&out));
}
