//! `systemd-analyze verify` accepts every unit under systemd/, with no warning at all.
//!
//! The units name `/usr/bin/gemba`; verify checks that each command exists, so the test
//! builds a throw-away root with this build's binary at that path, the other commands the units
//! run, and a copy of the system's own units (targets the service refers to).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;

fn exec_binaries(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            if !k.trim().starts_with("Exec") {
                return None;
            }
            let cmd = v.trim().trim_start_matches(['-', '@', ':', '+', '!']);
            cmd.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

fn copy_into(root: &Path, file: &Path, from: &Path) {
    let dst = root.join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(from, &dst)
        .unwrap_or_else(|e| panic!("copy {} → {}: {e}", from.display(), dst.display()));
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let status = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        status.as_ref().is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: run scripts/setup test (Debian package systemd)"
    );
    let units: Vec<PathBuf> = std::fs::read_dir(root().join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("service" | "path" | "timer" | "socket")
            )
        })
        .collect();
    assert!(units.iter().any(|u| u.ends_with("gemba.service")));
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let sys = Path::new("/usr/lib/systemd/system");
    let sys = if sys.is_dir() {
        sys.to_path_buf()
    } else {
        PathBuf::from("/lib/systemd/system")
    };
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&sys)
        .arg(r.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(cp.success(), "copying {} failed", sys.display());
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    let mut names = Vec::new();
    for u in &units {
        let text = std::fs::read_to_string(u).unwrap();
        for bin in exec_binaries(&text) {
            let host = if bin.ends_with("/gemba") {
                PathBuf::from(env!("CARGO_BIN_EXE_gemba"))
            } else {
                PathBuf::from(&bin)
            };
            assert!(
                host.exists(),
                "{}: command {bin} does not exist on this machine",
                u.display()
            );
            copy_into(r, Path::new(&bin), &host);
        }
        std::fs::copy(u, etc.join(u.file_name().unwrap())).unwrap();
        names.push(u.file_name().unwrap().to_string_lossy().into_owned());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(&names)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
    assert!(!names.is_empty());
}

/// Under systemd (JOURNAL_STREAM naming stderr, as a service gets it) the log goes to journald
/// in its native protocol (fields, priority, identifier), not as text lines on stderr. journald
/// is played by a datagram socket at /run/systemd/journal/socket inside a mount namespace of the
/// test's own, with a private tmpfs over /run: the machine's /run is never written.
#[test]
fn the_journal_logger_is_installed_when_stderr_is_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("journal.bin");
    let stderr = tmp.path().join("stderr.txt");
    let script = format!(
        r#"set -e
mount -t tmpfs -o size=1m,mode=0755 tmpfs /run
mkdir -p /run/systemd/journal
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
out = open(sys.argv[1], "ab", buffering=0)
while True:
    out.write(s.recv(1 << 20) + b"\x1e")
' {received} &
journald=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
exec 2>{stderr}
export JOURNAL_STREAM=$(stat -c %d:%i {stderr})
{gemba} -v ask --model {model} 'What is the pressure on press 1?' >/dev/null
status=$?
kill $journald
exit $status
"#,
        received = received.display(),
        stderr = stderr.display(),
        gemba = env!("CARGO_BIN_EXE_gemba"),
        model = root().join("models/tiny-qwen2/fp32").display(),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            &script,
        ])
        .env("GEMBA_LOG", "debug")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(out.status.success(), "{out:?}\nstderr: {err}");
    let journal = String::from_utf8_lossy(&std::fs::read(&received).unwrap()).into_owned();
    assert!(
        journal.contains("SYSLOG_IDENTIFIER=gemba"),
        "nothing reached the journal socket:\n{journal}"
    );
    assert!(
        journal.contains("PRIORITY=") && journal.contains("MESSAGE"),
        "{journal}"
    );
    assert!(
        journal.contains("decoder: cpu"),
        "gemba's own log lines go to the journal:\n{journal}"
    );
    assert!(
        !err.contains(" INFO ") && !err.contains(" DEBUG "),
        "log lines on stderr too:\n{err}"
    );
}
