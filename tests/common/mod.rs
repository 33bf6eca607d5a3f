//! Helpers shared by the integration tests: paths, the venv's Python, running `gemba`; and for
//! the report store: frames, clips, metadata, and an independent check that a store's files and
//! index agree.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

/// The project's virtualenv Python (made by `scripts/setup test`).
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup test", p.display());
    p
}

/// An ONNX Runtime library installed by scripts/setup (`1.31.1`, `1.23.2`).
pub fn ort_lib(version: &str) -> PathBuf {
    let p = root().join(format!(".ort/{version}/libonnxruntime.so.{version}"));
    assert!(p.exists(), "{} is missing: run scripts/setup test", p.display());
    p
}

pub fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Copies a bundle directory (flat) into `dst`.
pub fn copy_bundle(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gemba::capture::{AudioClip, Frame};
use gemba::report::{ListFilter, Report, ReportMeta, ReportStatus, Store, TextTimings, Trigger};
use sha2::{Digest, Sha256};

/// A frame whose pixels depend on `seed` (noise-like, so JPEG sizes are realistic).
pub fn frame(camera: &str, w: u32, h: u32, seed: u64) -> Frame {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let rgb = (0..w * h * 3)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A gradient plus noise: compressible like a camera image, not like a flat fill.
            ((i / 3 % w) as u64 * 255 / w as u64) as u8 / 2 + (x % 128) as u8
        })
        .collect();
    Frame {
        camera: camera.into(),
        seq: seed,
        captured_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + seed),
        width: w,
        height: h,
        rgb: Arc::new(rgb),
    }
}

pub fn clip(seconds: f32, seed: u64) -> AudioClip {
    let n = (16_000.0 * seconds) as usize;
    let f = 0.02 + (seed % 50) as f32 / 1000.0;
    AudioClip {
        source: "mic-1".into(),
        started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + seed),
        sample_rate: 16_000,
        samples: Arc::new((0..n).map(|i| (i as f32 * f).sin() * 0.5).collect()),
    }
}

pub fn meta(trigger: Trigger, cameras: &[&str]) -> ReportMeta {
    ReportMeta {
        trigger,
        prompt: Some("Is the press guard closed?".into()),
        cameras: cameras.iter().map(|c| c.to_string()).collect(),
        bundle_id: "gemba-test".into(),
        bundle_hash: "sha256:1111".into(),
        providers: [
            ("text".to_string(), "cpu".to_string()),
            ("vision".to_string(), "cpu".to_string()),
        ]
        .into(),
    }
}

pub fn at(ms: u64) -> TextTimings {
    TextTimings {
        at: Duration::from_millis(ms),
        token_span: None,
    }
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    ))
}

/// Every regular file under `dir`, as `/`-separated paths relative to `root`.
pub fn files_under(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .replace('\\', "/"),
                );
            }
        }
    }
    out.sort();
    out
}

/// Checks a store from the outside: the index is sound, every media file the index names is
/// there with its size and sha256, no other file (orphan or `.tmp-*`) is under `media/`, no
/// report is left open, and every report has its page. Returns all reports.
pub fn assert_consistent(store: &Store) -> Vec<Report> {
    assert_eq!(
        store.integrity_check().unwrap(),
        vec!["ok".to_string()],
        "PRAGMA integrity_check"
    );
    let mut reports = Vec::new();
    let mut referenced = HashSet::new();
    for summary in store.list(&ListFilter::default()).unwrap() {
        let r = store.get(&summary.id).unwrap();
        assert_ne!(r.status, ReportStatus::Open, "report {} left open", r.id);
        assert!(
            store.page_path(&r.id).is_file(),
            "report {} has no page",
            r.id
        );
        for s in &r.segments {
            if let Some(m) = s.media() {
                let path = store.media_path(m);
                let len = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or_else(|e| {
                        panic!(
                            "report {} segment {}: {}: {e}",
                            r.id,
                            s.index(),
                            path.display()
                        )
                    });
                assert_eq!(len, m.bytes, "size of {}", m.path);
                assert_eq!(sha256_file(&path), m.sha256, "sha256 of {}", m.path);
                referenced.insert(m.path.clone());
            }
        }
        reports.push(r);
    }
    for f in files_under(store.dir(), "media") {
        assert!(
            referenced.contains(&f),
            "file {f} is in media/ but no segment references it"
        );
    }
    for f in files_under(store.dir(), "html") {
        assert!(
            !f.rsplit('/').next().unwrap().starts_with(".tmp-"),
            "temp page {f} left behind"
        );
    }
    reports
}
