//! Helpers for the update tests: a fleet (keys + the two good bundles, fp32 as version 1 and int4
//! as version 2), models roots with version 1 installed, the stand-in daemon as a real process,
//! and raw tar writing for archives no honest packer would make.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gemba::update::daemon::{read_status, DaemonStatus};
use gemba::update::keys::{keygen, SigningKey};
use gemba::update::manifest::{Manifest, SmokeSpec, MANIFEST_NAME, SIGNATURE_NAME};
use gemba::update::pack::{build_manifest, pack, trusted_comment, PackOptions};

pub const PROMPT: &str = "What is the pressure on press 1?";
pub const EXPECT: &str = "8.4 bar";

pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fp32() -> PathBuf {
    root_dir().join("models/tiny-qwen2/fp32")
}

pub fn int4() -> PathBuf {
    root_dir().join("models/tiny-qwen2/int4")
}

pub fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

pub fn smoke() -> SmokeSpec {
    SmokeSpec {
        prompt: PROMPT.into(),
        expect_contains: EXPECT.into(),
        system: None,
        max_tokens: 64,
    }
}

pub fn opts(version: &str) -> PackOptions {
    PackOptions {
        version: version.into(),
        smoke: Some(smoke()),
        ..Default::default()
    }
}

/// Keys and the two good archives, in a temp dir.
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub key: PathBuf,
    pub pubkey: PathBuf,
    pub rogue_key: PathBuf,
    /// fp32 as version 1 (`.tar`), int4 as version 2 (`.tar.zst`).
    pub v1: PathBuf,
    pub v2: PathBuf,
}

impl Fleet {
    pub fn new() -> Fleet {
        Self::with(&fp32(), &int4(), Some(smoke()))
    }

    /// Version 1 and 2 from these bundle directories, with this smoke test.
    pub fn with(v1_dir: &Path, v2_dir: &Path, smoke: Option<SmokeSpec>) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let (_, key, pubkey) = keygen(&tmp.path().join("fleet"), false).unwrap();
        let (_, rogue_key, _) = keygen(&tmp.path().join("rogue"), false).unwrap();
        let k = SigningKey::load(&key).unwrap();
        let v1 = tmp.path().join("v1.tar");
        let v2 = tmp.path().join("v2.tar.zst");
        let o = |v: &str| PackOptions {
            version: v.into(),
            smoke: smoke.clone(),
            ..Default::default()
        };
        pack(v1_dir, &k, &o("1"), &v1).unwrap();
        pack(v2_dir, &k, &o("2"), &v2).unwrap();
        Fleet {
            tmp,
            key,
            pubkey,
            rogue_key,
            v1,
            v2,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn signing_key(&self) -> SigningKey {
        SigningKey::load(&self.key).unwrap()
    }

    /// `gemba model --models ROOT --trusted-key fleet.pub --state-dir STATE`.
    pub fn model(&self, root: &Path, state: &Path) -> Command {
        let mut c = gemba();
        c.arg("model")
            .arg("--models")
            .arg(root)
            .arg("--trusted-key")
            .arg(&self.pubkey)
            .arg("--state-dir")
            .arg(state);
        c
    }

    /// A fresh models root (and state dir) with version 1 installed and active.
    pub fn root_with_v1(&self, name: &str) -> (PathBuf, PathBuf) {
        let root = self.path(&format!("{name}/models"));
        let state = self.path(&format!("{name}/state"));
        std::fs::create_dir_all(&state).unwrap();
        let out = self
            .model(&root, &state)
            .args(["install", "--no-daemon"])
            .arg(&self.v1)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "installing v1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(current(&root).as_deref(), Some("1"));
        (root, state)
    }
}

/// The version `current` points at.
pub fn current(root: &Path) -> Option<String> {
    std::fs::read_link(root.join("current")).ok().map(|t| {
        t.to_string_lossy()
            .trim_start_matches("versions/")
            .to_string()
    })
}

pub fn installed(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn staging_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("staging"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

pub fn record(root: &Path) -> gemba::update::UpdateRecord {
    gemba::update::read_record(root).unwrap()
}

/// `gemba ask --model ROOT/current` answers the smoke question right.
pub fn assert_answers(root: &Path) {
    let out = gemba()
        .arg("ask")
        .arg("--model")
        .arg(root.join("current"))
        .arg(PROMPT)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(EXPECT),
        "gemba ask on {}/current: {}\n{text}\n{}",
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stand-in daemon as a real process; killed (SIGKILL) on drop.
pub struct FakeDaemon {
    pub child: Child,
    pub state: PathBuf,
}

impl FakeDaemon {
    pub fn start(root: &Path, state: &Path, extra: &[&str]) -> FakeDaemon {
        let _ = std::fs::remove_file(state.join("status.json"));
        let child = gemba()
            .arg("model")
            .arg("--models")
            .arg(root)
            .arg("--state-dir")
            .arg(state)
            .arg("fake-daemon")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = FakeDaemon {
            child,
            state: state.to_path_buf(),
        };
        d.wait(
            |s| s.pid == d.child.id() && s.loaded_at.is_some(),
            Duration::from_secs(60),
        );
        d
    }

    pub fn status(&self) -> DaemonStatus {
        read_status(&self.state).unwrap().expect("status.json")
    }

    /// Waits until `pred` holds for status.json; panics with the last status after `timeout`.
    pub fn wait(&self, pred: impl Fn(&DaemonStatus) -> bool, timeout: Duration) -> DaemonStatus {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = read_status(&self.state) {
                if pred(&s) {
                    return s;
                }
                if t0.elapsed() > timeout {
                    panic!("daemon status never matched: {s:?}");
                }
            } else if t0.elapsed() > timeout {
                panic!("no daemon status in {}", self.state.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with `GEMBA_UPDATE_PAUSE_AFTER=point`, waits until it says it paused there, and
/// kills it with SIGKILL. Panics if it finishes without pausing.
pub fn kill_at(mut cmd: Command, point: &str) {
    let mut child = cmd
        .env("GEMBA_UPDATE_PAUSE_AFTER", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut paused = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(&format!("paused after {point} ")) {
            paused = true;
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        paused,
        "the installer never paused after {point} ({status}):\n{seen}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{seen}");
}

/// One raw tar entry, written as given (no path sanitising).
#[derive(Clone)]
pub struct Raw {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// Header size when it should lie about the data.
    pub size: Option<u64>,
}

impl Raw {
    pub fn file(name: &str, data: Vec<u8>) -> Raw {
        Raw {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data,
            link: None,
            size: None,
        }
    }
    pub fn special(name: &str, kind: tar::EntryType, link: Option<&str>) -> Raw {
        Raw {
            name: name.as_bytes().to_vec(),
            kind,
            data: Vec::new(),
            link: link.map(|l| l.as_bytes().to_vec()),
            size: None,
        }
    }
}

/// Writes `entries` as a tar (`.tar`) or zstd tar (`.tar.zst`) file, bypassing tar-rs's path checks.
pub fn write_raw(out: &Path, entries: &[Raw]) {
    let mut buf = Vec::new();
    {
        let mut b = tar::Builder::new(&mut buf);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(e.kind);
            h.set_mode(0o644);
            h.set_size(e.size.unwrap_or(e.data.len() as u64));
            let name = &mut h.as_old_mut().name;
            assert!(e.name.len() < name.len());
            name[..e.name.len()].copy_from_slice(&e.name);
            if let Some(l) = &e.link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            b.append(&h, e.data.as_slice()).unwrap();
        }
        b.finish().unwrap();
    }
    if out.to_string_lossy().ends_with(".zst") {
        buf = zstd::encode_all(buf.as_slice(), 3).unwrap();
    }
    std::fs::write(out, buf).unwrap();
}

/// A signed manifest for `dir` (edited by `edit` before signing) and the bundle's file entries.
pub fn signed(
    fleet: &Fleet,
    dir: &Path,
    o: &PackOptions,
    edit: impl FnOnce(&mut Manifest),
) -> (Raw, Raw, Vec<Raw>) {
    let mut m = build_manifest(dir, o).unwrap();
    edit(&mut m);
    let bytes = m.to_bytes();
    let sig = fleet.signing_key().sign(&bytes, &trusted_comment(&m));
    let files = m
        .files
        .iter()
        .map(|f| Raw::file(&f.path, std::fs::read(dir.join(&f.path)).unwrap()))
        .collect();
    (
        Raw::file(MANIFEST_NAME, bytes),
        Raw::file(SIGNATURE_NAME, sig.into_bytes()),
        files,
    )
}
