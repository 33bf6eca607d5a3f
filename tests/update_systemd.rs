//! The update units: `systemd-analyze verify` accepts them, and the service's own command line,
//! run as written (paths moved into a temp dir), drains the inbox the path unit watches.
//!
//! How verify finds `/usr/bin/gemba`: `systemd-analyze verify --root=DIR` resolves unit
//! files and executables inside DIR, so the test builds a throw-away root holding a copy of this
//! machine's unit directory (for sysinit.target and friends), the two units, and the built
//! binary at usr/bin/gemba (a hard link, or a copy across file systems). Nothing is
//! installed on the machine itself, and it works without root. Removing the binary from that
//! root must make verify fail, so the check is known to be real.

mod update_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use update_support::*;

fn unit(name: &str) -> String {
    std::fs::read_to_string(root_dir().join("systemd").join(name)).unwrap()
}

/// The value of the first `Key=` line of a unit.
fn key(text: &str, k: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("no {k}="))
        .to_string()
}

fn fake_root() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_path_buf();
    for d in ["usr/lib/systemd", "etc/systemd/system", "usr/bin"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let sys = Path::new("/usr/lib/systemd/system");
    assert!(
        sys.is_dir(),
        "{} missing: is systemd installed (apt-get install systemd)?",
        sys.display()
    );
    let st = Command::new("cp")
        .arg("-a")
        .arg(sys)
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(st.success());
    for u in ["gemba-update.path", "gemba-update.service"] {
        std::fs::copy(
            root_dir().join("systemd").join(u),
            r.join("etc/systemd/system").join(u),
        )
        .unwrap();
    }
    let bin = r.join("usr/bin/gemba");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_gemba"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_gemba"), &bin).unwrap();
    }
    (t, r)
}

fn verify(root: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["gemba-update.path", "gemba-update.service"])
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    (out.status.success(), text(&out))
}

#[test]
fn systemd_analyze_verify_accepts_the_update_units() {
    let (_t, r) = fake_root();
    let (ok, out) = verify(&r);
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(
        !out.contains("gemba-update"),
        "verify warned about our units:\n{out}"
    );
    // Without the binary the same check fails: verify really looks for ExecStart's executable.
    std::fs::remove_file(r.join("usr/bin/gemba")).unwrap();
    let (ok, out) = verify(&r);
    assert!(
        !ok && out.contains("/usr/bin/gemba is not executable"),
        "{out}"
    );
}

#[test]
fn the_path_unit_watches_what_the_service_drains() {
    let path = unit("gemba-update.path");
    let service = unit("gemba-update.service");
    let inbox = key(&path, "DirectoryNotEmpty");
    assert_eq!(key(&path, "MakeDirectory"), "yes");
    assert_eq!(key(&path, "Unit"), "gemba-update.service");
    assert_eq!(key(&service, "Type"), "oneshot");
    assert_eq!(key(&service, "ConditionDirectoryNotEmpty"), inbox);
    assert!(key(&service, "ExecStart").contains(&format!("--inbox {inbox}")));
}

#[test]
fn the_service_command_line_installs_the_inbox_and_sorts_done_from_failed() {
    let f = Fleet::new();
    let base = f.path("board");
    let var = base.join("var-lib-gemba");
    let etc = base.join("etc-gemba");
    std::fs::create_dir_all(etc.join("update-keys")).unwrap();
    std::fs::copy(&f.pubkey, etc.join("update-keys/fleet.pub")).unwrap();
    // The board runs version 1 and the daemon.
    let models = var.join("models");
    let out = f
        .model(&models, &var)
        .args(["install", "--no-daemon"])
        .arg(&f.v1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let d = FakeDaemon::start(&models, &var, &[]);
    // An uploader renames two archives into the inbox: a tampered one and the good version 2.
    let inbox = var.join("updates/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let (m, s, mut files) = signed(&f, &int4(), &opts("2"), |_| {});
    files.push(Raw::file("evil.sh", b"x".to_vec()));
    write_raw(&inbox.join("bad.tar"), &[vec![m, s], files].concat());
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(&f.v2, inbox.join("v2.tar.zst")).unwrap();

    let exec = key(&unit("gemba-update.service"), "ExecStart")
        .replace("/usr/bin/gemba", env!("CARGO_BIN_EXE_gemba"))
        .replace("/var/lib/gemba", &var.to_string_lossy())
        .replace("/etc/gemba", &etc.to_string_lossy());
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one archive failed, so the unit fails:\n{all}"
    );
    assert!(
        all.contains("bad.tar: rejected (") && all.contains("v2.tar.zst: installed (healthy)"),
        "{all}"
    );
    assert_eq!(
        std::fs::read_dir(&inbox).unwrap().count(),
        0,
        "inbox not drained"
    );
    let done: serde_json::Value = serde_json::from_slice(
        &std::fs::read(var.join("updates/done/v2.tar.zst.result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            done["ok"].as_bool(),
            done["state"].as_str(),
            done["outcome"]["version"].as_str()
        ),
        (Some(true), Some("healthy"), Some("2"))
    );
    assert!(var.join("updates/done/v2.tar.zst").is_file());
    let failed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(var.join("updates/failed/bad.tar.result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(failed["ok"].as_bool(), Some(false));
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("extra file: entry \"evil.sh\""),
        "{failed}"
    );
    assert!(var.join("updates/failed/bad.tar").is_file());
    assert_eq!(current(&models).as_deref(), Some("2"));
    assert_eq!(d.status().bundle_id.as_deref(), Some("2"));
    assert_answers(&models);
}
