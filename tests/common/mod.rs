//! Helpers shared by the integration tests: paths, the venv's Python, running `gemba`.
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
