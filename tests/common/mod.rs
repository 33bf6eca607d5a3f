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
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup test",
        p.display()
    );
    p
}

/// An ONNX Runtime library installed by scripts/setup (`1.31.1`, `1.23.2`).
pub fn ort_lib(version: &str) -> PathBuf {
    let p = root().join(format!(".ort/{version}/libonnxruntime.so.{version}"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup test",
        p.display()
    );
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

/// A camera's frame from an image file (JPEG or PNG), decoded as gemba decodes it.
pub fn frame_from_file(camera: &str, path: &Path) -> Frame {
    let img = gemba::media::vision::load_image(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Frame {
        camera: camera.into(),
        seq: 0,
        captured_at: SystemTime::now(),
        width: img.width as u32,
        height: img.height as u32,
        rgb: Arc::new(img.rgb),
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

// ---- Headless Chromium (Debian package `chromium`, installed by scripts/setup test) ----

pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Some(p) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!(
        "headless Chromium not found (looked for `chromium` and `chromium-browser` on PATH): \
         run scripts/setup, which installs the Debian package `chromium`"
    );
}

/// Opens `page` in headless Chromium and returns the DOM after the page's load handlers ran.
pub fn dump_dom(page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s on {}", page.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let dom = out.join().unwrap().unwrap();
    let err = err.join().unwrap();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}) on {}:\n{err}",
        page.display()
    );
    dom
}

/// The values of `attr` in document order.
pub fn attr_values<'a>(dom: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    dom.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// Every `<img …>` tag.
pub fn img_tags(dom: &str) -> Vec<&str> {
    dom.match_indices("<img ")
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap() + 1])
        .collect()
}

/// Compares `actual` with `tests/golden/<name>`; on a mismatch panics with a unified diff.
/// `GEMBA_BLESS=1` (re)writes the golden file instead.
pub fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("GEMBA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GEMBA_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
        panic!(
            "{name} differs from {} (- golden, + now; GEMBA_BLESS=1 rewrites it):\n{}",
            path.display(),
            diff.unified_diff()
                .context_radius(2)
                .header("golden", "now")
        );
    }
}

/// Writes `n` small JPEG frames (`f0.jpg` …) for a replay camera, each different enough from the
/// last for the change gate to fire.
pub fn write_replay_frames(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            let v = ((x * (i + 1) + y * 7 + i * 40) % 256) as u8;
            image::Rgb([v, 255 - v, (i * 40) as u8])
        });
        img.save(dir.join(format!("f{i}.jpg"))).unwrap();
    }
}

/// A size-limited tmpfs, unmounted on drop (even when the test panics).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(path.to_str().unwrap());
        let opts = c(&format!("size={size},mode=0755"));
        // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            panic!(
                "mounting a {size} tmpfs at {} failed: {} — this test needs root (CAP_SYS_ADMIN) to \
                 give the store a small real file system; run the tests as root, as CI does",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Tmpfs { path, _dir: dir }
    }
}

/// A spawned daemon, killed if the test fails before it stops it: a failed assertion must not
/// leave a daemon running after its directory is gone (two once ran on for half an hour, taking
/// most of both cores from the tests after them).
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: valid path; MNT_DETACH so a leftover open file cannot keep it mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// tests/conformance/genai_greedy.py (ORT-GenAI, pip) with these arguments; its JSON answer.
pub fn genai(args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root().join("tests/conformance/genai_greedy.py"))
        .args(args)
        .current_dir(root());
    json_of(&run_ok(cmd))
}

/// Decode speed-up tests (tests/speculation.rs, tests/speedups_real.rs): `cases` (text cases of
/// `gemba debug greedy`, prompt ids) each followed by a follow-up: its prompt, its greedy answer
/// (from `answers`, a run of the same cases) and the next case's prompt — a conversation's second
/// turn, whose start a prefix cache holds after the first.
pub fn with_follow_ups(
    cases: &[serde_json::Value],
    answers: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (i, (c, a)) in cases.iter().zip(answers).enumerate() {
        out.push(c.clone());
        let next = &cases[(i + 1) % cases.len()];
        let mut ids: Vec<serde_json::Value> = c["input_ids"].as_array().unwrap().clone();
        ids.extend(a["output_ids"].as_array().unwrap().iter().cloned());
        ids.extend(next["input_ids"].as_array().unwrap().iter().cloned());
        let mut f = c.clone();
        f["name"] = serde_json::json!(format!("{}:follow-up", c["name"].as_str().unwrap()));
        // Room for an answer after the longer prompt.
        f["max_length"] = serde_json::json!(ids.len() + 64);
        f["input_ids"] = serde_json::Value::Array(ids);
        out.push(f);
    }
    out
}

/// `gemba debug greedy` (or `greedy-mm`) on `spec`; the whole output.
pub fn debug_greedy(mode: &str, spec: &serde_json::Value) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cases.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let mut cmd = gemba();
    cmd.args(["debug", mode]).arg(&file);
    json_of(&run_ok(cmd))
}
