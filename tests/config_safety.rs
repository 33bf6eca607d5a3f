//! Config values that once passed `gemba config check` and then panicked, hung or silently
//! killed a stage (issue 10, finding 7), the daemon's start-up order, a stage's death, SIGTERM
//! during the model load, and the config property test — all with the real binary.
//!
//! The property test does not keep a list of keys: it asks `gemba config check` itself. Every
//! section is strict (`deny_unknown_fields`), so an unknown key `zzz` is answered with the list
//! of the section's keys; a key given a string is answered with its type (`expected usize`,
//! `is not a duration`, `expected struct RawVad`, …). Walking that gives every numeric, duration
//! and size key of the config structs, including ones added later. Each gets boundary values;
//! each value must give a `config check` error that names the file and the key, or pass — and
//! the values that pass are run, together, in real daemons whose every stage must be running
//! (GET /status) and which must stop cleanly.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A directory with replay frames and a microphone WAV, and the base config over them: the demo
/// model (vision and speech, so the voice stage runs), one replay camera, a WAV microphone, voice.
struct Base {
    dir: tempfile::TempDir,
}

impl Base {
    fn new() -> Base {
        let dir = tempfile::tempdir().unwrap();
        write_replay_frames(&dir.path().join("frames"), 4);
        // 3 minutes of faint noise: the WAV microphone runs for the whole test.
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(dir.path().join("mic.wav"), spec).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..16_000 * 180 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.write_sample((x % 61) as i16 - 30).unwrap();
        }
        w.finalize().unwrap();
        Base { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn table(&self) -> toml::Table {
        let text = format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 16
[providers]
order = ["cpu"]
intra_op_threads = 1
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 2.0
prompt = "Give me a status report."
[microphone]
kind = "wav"
path = "mic.wav"
[voice]
cameras = ["press-1"]
output = "none"
[voice.vad]
model = "{vad}"
"#,
            model = root().join("models/demo").display(),
            vad = root().join("models/vad/silero_vad_16k_op15.onnx").display()
        );
        toml::from_str(&text).unwrap()
    }

    /// Writes `table` as the config file and runs `gemba config check` on it.
    fn check(&self, table: &toml::Table) -> (bool, String) {
        let cfg = self.path().join("gemba.toml");
        std::fs::write(&cfg, toml::to_string(table).unwrap()).unwrap();
        let out = gemba()
            .args(["config", "check"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !err.contains("panicked") && matches!(out.status.code(), Some(0 | 1)),
            "config check must answer, not crash: {} {err}",
            out.status
        );
        (out.status.success(), err)
    }
}

/// One step of a key: a table key or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key_text(path: &[Seg]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Sets `value` at `path` in `t`, creating tables on the way (arrays must exist).
fn set(t: &mut toml::Table, path: &[Seg], value: toml::Value) {
    let Seg::Key(k) = &path[0] else {
        panic!("a path starts with a key: {path:?}")
    };
    if path.len() == 1 {
        t.insert(k.clone(), value);
        return;
    }
    match &path[1] {
        Seg::Index(n) => {
            let arr = t
                .get_mut(k)
                .and_then(|x| x.as_array_mut())
                .expect("the array is in the base config");
            set(arr[*n].as_table_mut().unwrap(), &path[2..], value)
        }
        Seg::Key(_) => {
            let sub = t
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set(sub.as_table_mut().unwrap(), &path[1..], value)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Int,
    Float,
    Duration,
    Size,
}

/// The keys of the section at `path`, from the `unknown key` answer (which lists them).
fn section_keys(base: &Base, t: &toml::Table, path: &[Seg]) -> Vec<String> {
    let mut probe = t.clone();
    let mut p = path.to_vec();
    p.push(Seg::Key("zzz".into()));
    set(&mut probe, &p, toml::Value::Integer(1));
    let (ok, err) = base.check(&probe);
    assert!(
        !ok,
        "an unknown key at {} passed config check",
        key_text(&p)
    );
    // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, …", then " in `section`".
    let list = err
        .split("unknown field `zzz`, expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list for {}: {err}", key_text(&p)));
    let list = list.rsplit_once(" in `").map(|(l, _)| l).unwrap_or(list);
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// Every numeric, duration and size key of the config, by walking the sections.
fn numeric_keys(base: &Base) -> BTreeMap<String, (Vec<Seg>, Kind)> {
    let t = base.table();
    let mut out = BTreeMap::new();
    let mut todo: Vec<Vec<Seg>> = vec![vec![]];
    while let Some(section) = todo.pop() {
        for k in section_keys(base, &t, &section) {
            let mut p = section.clone();
            p.push(Seg::Key(k.clone()));
            let mut probe = t.clone();
            set(&mut probe, &p, toml::Value::String("zzz-probe".into()));
            let (_, err) = base.check(&probe);
            let key = key_text(&p);
            let about_key = err.contains(&format!("{key}:"));
            let expected = err
                .split("expected ")
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            let kind = if !about_key {
                None // a string the schema takes (a path, a name, a prompt)
            } else if err.contains("is not a duration") {
                Some(Kind::Duration)
            } else if err.contains("is not a size") {
                Some(Kind::Size)
            } else if [
                "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
            ]
            .contains(&expected)
            {
                Some(Kind::Int)
            } else if ["f32", "f64"].contains(&expected) {
                Some(Kind::Float)
            } else if expected == "struct" {
                todo.push(p.clone());
                None
            } else if err.contains("expected a sequence") && section.is_empty() && k == "cameras" {
                let mut c = p.clone();
                c.push(Seg::Index(0));
                todo.push(c);
                None
            } else {
                None // booleans, lists, maps of strings
            };
            if let Some(kind) = kind {
                out.insert(key, (p, kind));
            }
        }
    }
    out
}

fn boundary_values(kind: Kind) -> Vec<toml::Value> {
    use toml::Value::*;
    let s = |x: &str| String(x.to_string());
    match kind {
        Kind::Int => vec![
            Integer(0),
            Integer(-1),
            Integer(1),
            Integer(i64::MAX),
            Integer(i64::MIN),
            Float(1e300),
        ],
        Kind::Float => vec![
            Float(0.0),
            Float(-1.0),
            Float(1e-300),
            Float(1e-20),
            Float(1e300),
            Float(f64::INFINITY),
            Float(f64::NAN),
            Integer(i64::MAX),
        ],
        Kind::Duration => vec![
            s("0s"),
            s("-1s"),
            s("1ns"),
            s("1ms"),
            s("18446744073709551615s"),
            s("100000000d"),
            Integer(0),
        ],
        Kind::Size => vec![
            Integer(0),
            Integer(-1),
            Integer(1),
            Integer(i64::MAX),
            s("0B"),
            s("1000 PiB"),
        ],
    }
}

/// `LO–HI` of an "… is out of range LO–HI …" message, as values of the key's kind (durations
/// and sizes are quoted when they hold spaces: `"1s"–"1day"`, `"1.0 KiB"–"1.0 GiB"`).
fn stated_range(err: &str, kind: Kind) -> Option<(toml::Value, toml::Value)> {
    let rest = err.split("is out of range ").nth(1)?;
    let (lo, hi) = rest.split_once('–')?;
    let token = |t: &str| -> String {
        match t.strip_prefix('"') {
            Some(q) => q.split('"').next().unwrap_or("").to_string(),
            None => t
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches([',', ')', ';'])
                .to_string(),
        }
    };
    let (lo, hi) = (token(lo), token(hi));
    let value = |t: &str| -> Option<toml::Value> {
        Some(match kind {
            Kind::Int => toml::Value::Integer(t.parse().ok()?),
            Kind::Float => toml::Value::Float(t.parse().ok()?),
            Kind::Duration => {
                humantime::parse_duration(t).ok()?;
                toml::Value::String(t.to_string())
            }
            Kind::Size => {
                t.parse::<bytesize::ByteSize>().ok()?;
                toml::Value::String(t.to_string())
            }
        })
    };
    Some((value(&lo)?, value(&hi)?))
}

/// A value's order, to pick the smallest and the largest that pass.
fn magnitude(v: &toml::Value) -> f64 {
    match v {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        toml::Value::String(s) => {
            if let Ok(d) = humantime::parse_duration(s) {
                d.as_secs_f64()
            } else {
                s.parse::<bytesize::ByteSize>()
                    .map(|b| b.as_u64() as f64)
                    .unwrap_or(0.0)
            }
        }
        _ => 0.0,
    }
}

/// A running `gemba run` with its stderr collected.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: Option<String>,
}

fn spawn(cfg: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = gemba()
        .args(["run", "--config"])
        .arg(cfg)
        .env("GEMBA_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&stderr);
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    Running {
        child,
        stderr,
        addr: None,
    }
}

impl Running {
    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line starts with `prefix` (or the process exits: None).
    fn wait_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let t = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return Some(l);
            }
            if self.child.try_wait().unwrap().is_some() || t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(s);
            }
            if t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn term(&self) {
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    fn status(&self) -> serde_json::Value {
        let addr = self.addr.as_ref().expect("serving");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut r = agent.get(&format!("http://{addr}/status")).call().unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the daemon on `table`, checks through /status that every stage runs, then stops it
/// with SIGTERM; returns the stderr lines. `what` names the run in failures.
fn run_daemon_and_check_stages(base: &Base, table: &toml::Table, what: &str) -> Vec<String> {
    let (ok, err) = base.check(table);
    assert!(ok, "{what}: the combined config does not pass check: {err}");
    let cfg = base.path().join("gemba.toml");
    let mut d = spawn(&cfg, &[]);
    let listening = d.wait_line("gemba: API listening on http://", Duration::from_secs(60));
    let serving = d.wait_line("gemba: serving", Duration::from_secs(180));
    assert!(
        listening.is_some() && serving.is_some(),
        "{what}: the daemon did not start: {:?}",
        d.lines()
    );
    d.addr = listening
        .unwrap()
        .strip_prefix("gemba: API listening on http://")
        .unwrap()
        .split_whitespace()
        .next()
        .map(String::from);
    // Every stage running, the camera delivering, for a few seconds of work.
    let want = [
        "api",
        "camera press-1",
        "dispatcher",
        "model worker",
        "monitor",
        "retention",
        "status",
        "voice",
    ];
    // The last stages start just after the "serving" line.
    let t = Instant::now();
    while want.iter().any(|w| d.status()["stages"].get(w).is_none())
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    let mut seen = serde_json::Value::Null;
    while t.elapsed() < Duration::from_secs(4) {
        seen = d.status();
        let stages = seen["stages"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: /status has no stages: {seen}"));
        for name in want {
            assert_eq!(
                stages.get(name).map(|s| s["state"].clone()),
                Some("running".into()),
                "{what}: stage {name}: {seen}\n{:?}",
                d.lines()
            );
        }
        for (name, s) in stages {
            assert_eq!(
                s["state"], "running",
                "{what}: stage {name} is not running: {s}"
            );
        }
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "{what}: the daemon exited: {:?}",
            d.lines()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen["cameras"][0]["frames"].as_u64() > Some(0),
        "{what}: the camera delivered no frame: {seen}"
    );
    d.term();
    let status = d.wait_exit(Duration::from_secs(120));
    let lines = d.lines();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{what}: a clean stop: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains(" ERROR ")),
        "{what}: {lines:?}"
    );
    lines
}

/// The config property test (issue 10, "Must show"): every numeric, duration and size key, each
/// boundary value → a `config check` error naming the file and the key, or a daemon whose
/// stages all run. The values that pass are run together: the smallest of each key in one
/// daemon, the largest in another.
#[test]
fn every_numeric_key_at_its_boundaries_is_refused_by_key_or_runs() {
    let base = Base::new();
    let keys = numeric_keys(&base);
    // The walk must have found the sections (a changed error format would find nothing).
    for k in [
        "model.max_new_tokens",
        "model.deadline",
        "providers.intra_op_threads",
        "providers.tensorrt.workspace",
        "store.check_every",
        "store.max_bytes",
        "monitor.queue",
        "daemon.drain_deadline",
        "api.max_asks",
        "api.sse_buffer",
        "cameras[0].fps",
        "cameras[0].interval",
        "cameras[0].change_threshold",
        "microphone.chunk",
        "voice.vad.threshold",
        "update.health_timeout",
        "update.keep",
    ] {
        assert!(
            keys.contains_key(k),
            "the walk did not find {k}; found {:?}",
            keys.keys().collect::<Vec<_>>()
        );
    }
    assert!(keys.len() >= 30, "{keys:?}");
    let cfg_name = base.path().join("gemba.toml").display().to_string();
    let mut low = base.table();
    let mut high = base.table();
    let mut refused = 0;
    let mut passed = Vec::new();
    for (key, (path, kind)) in &keys {
        let mut ok_values: Vec<toml::Value> = Vec::new();
        let mut stated_bounds: Vec<(toml::Value, toml::Value)> = Vec::new();
        for v in boundary_values(*kind) {
            let mut t = base.table();
            set(&mut t, path, v.clone());
            let (ok, err) = base.check(&t);
            if ok {
                ok_values.push(v);
            } else {
                refused += 1;
                if let Some(b) = stated_range(&err, *kind) {
                    if !stated_bounds.contains(&b) {
                        stated_bounds.push(b);
                    }
                }
                assert!(
                    err.contains(&format!("{key}:")),
                    "{key} = {v}: the error does not name the key: {err}"
                );
                assert!(
                    err.contains(&cfg_name),
                    "{key} = {v}: the error does not name the file: {err}"
                );
                assert_eq!(err.lines().count(), 1, "{key} = {v}: one line: {err}");
            }
        }
        // The bounds the refusals state ("… is out of range LO–HI") must themselves pass: they
        // join the values run in the daemons.
        for (lo, hi) in stated_bounds.iter() {
            for v in [lo, hi] {
                let mut t = base.table();
                set(&mut t, path, v.clone());
                let (ok, err) = base.check(&t);
                assert!(
                    ok,
                    "{key} = {v}: a bound the error message states is refused: {err}"
                );
                ok_values.push(v.clone());
            }
        }
        ok_values.sort_by(|a, b| magnitude(a).total_cmp(&magnitude(b)));
        if let (Some(lo), Some(hi)) = (ok_values.first(), ok_values.last()) {
            set(&mut low, path, lo.clone());
            set(&mut high, path, hi.clone());
            passed.push(format!(
                "{key} ∈ {{{}}}",
                ok_values
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    eprintln!(
        "{} keys, {refused} values refused by key; passing:\n  {}",
        keys.len(),
        passed.join("\n  ")
    );
    assert!(!passed.is_empty());
    run_daemon_and_check_stages(&base, &low, "smallest passing values");
    run_daemon_and_check_stages(&base, &high, "largest passing values");
}

/// Each config of finding 7, as it was found: refused by `config check` (and by `gemba run`,
/// which shares the validation) with one line naming the file and the key — no panic.
#[test]
fn finding_7_configs_are_refused_by_key() {
    let base = Base::new();
    let cases: &[(&[&str], toml::Value, &str)] = &[
        (
            &["cameras", "0", "fps"],
            toml::Value::Float(1e-20),
            "cameras[0].fps",
        ),
        (
            &["cameras", "0", "interval"],
            "0s".into(),
            "cameras[0].interval",
        ),
        (&["store", "check_every"], "0s".into(), "store.check_every"),
        (
            &["api", "max_asks"],
            toml::Value::Integer(i64::MAX),
            "api.max_asks",
        ),
        (
            &["monitor", "queue"],
            toml::Value::Integer(i64::MAX),
            "monitor.queue",
        ),
        (
            &["api", "sse_buffer"],
            toml::Value::Integer(i64::MAX),
            "api.sse_buffer",
        ),
        (
            &["providers", "intra_op_threads"],
            toml::Value::Integer(100_000),
            "providers.intra_op_threads",
        ),
        (
            &["providers", "inter_op_threads"],
            toml::Value::Integer(400),
            "providers.inter_op_threads",
        ),
        (&["model", "deadline"], "0s".into(), "model.deadline"),
        (
            &["cameras", "0", "source"],
            "frames/nothing-*.jpg".into(),
            "cameras[0].source",
        ),
    ];
    for (path, value, key) in cases {
        let p: Vec<Seg> = path
            .iter()
            .map(|s| {
                s.parse()
                    .map(Seg::Index)
                    .unwrap_or_else(|_| Seg::Key(s.to_string()))
            })
            .collect();
        let mut t = base.table();
        set(&mut t, &p, value.clone());
        let (ok, err) = base.check(&t);
        assert!(!ok, "{key} = {value} passed config check");
        assert!(
            err.starts_with("gemba: error: ") && err.contains(&format!("gemba.toml: {key}: ")),
            "{key}: {err}"
        );
        // The daemon refuses it the same way, before anything starts.
        let out = gemba()
            .args(["run", "--config"])
            .arg(base.path().join("gemba.toml"))
            .output()
            .unwrap();
        let run_err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {run_err}");
        assert!(
            run_err.contains(&format!("{key}: ")) && !run_err.contains("panicked"),
            "{key}: {run_err}"
        );
        assert!(
            !base.path().join("store/status.json").exists(),
            "{key}: the daemon got as far as status.json"
        );
    }
}

/// Cameras are opened and checked before the model loads: a replay camera whose first image is
/// broken (config check lists files, the camera decodes them) stops `gemba run` at once — while
/// a model load that would take ten minutes never starts — and READY/status.json never happen.
#[test]
fn a_camera_that_cannot_open_stops_start_up_before_the_model_loads() {
    let base = Base::new();
    std::fs::write(
        base.path().join("frames/000-broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let cfg = base.path().join("gemba.toml");
    std::fs::write(&cfg, toml::to_string(&base.table()).unwrap()).unwrap();
    let mut d = spawn(&cfg, &[("GEMBA_TEST_LOAD_DELAY_MS", "600000")]);
    let status = d
        .wait_exit(Duration::from_secs(60))
        .expect("gemba run exits without loading the model");
    let lines = d.lines();
    assert_eq!(status.code(), Some(1), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("camera press-1") && l.contains("000-broken.png")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("gemba: serving")),
        "{lines:?}"
    );
    assert!(!base.path().join("store/status.json").exists());
}

/// SIGTERM during the model load: the daemon exits at once instead of after the load (the load
/// here takes ten more minutes through GEMBA_TEST_LOAD_DELAY_MS, a board's slow load).
#[test]
fn sigterm_during_the_model_load_stops_the_daemon() {
    let base = Base::new();
    let cfg = base.path().join("gemba.toml");
    std::fs::write(&cfg, toml::to_string(&base.table()).unwrap()).unwrap();
    let mut d = spawn(&cfg, &[("GEMBA_TEST_LOAD_DELAY_MS", "600000")]);
    // The API is bound and the cameras are open just before the load starts.
    assert!(
        d.wait_line("gemba: API listening", Duration::from_secs(60))
            .is_some(),
        "{:?}",
        d.lines()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "still loading: {:?}",
        d.lines()
    );
    d.term();
    let status = d
        .wait_exit(Duration::from_secs(60))
        .expect("the daemon exits during the load, not after it");
    let lines = d.lines();
    assert_eq!(status.code(), Some(0), "a clean stop: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("gemba: SIGTERM during start-up (loading the model); stopped")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("gemba: serving")),
        "{lines:?}"
    );
    assert!(
        !base.path().join("store/status.json").exists(),
        "never READY"
    );
}

/// A stage that panics stops the daemon with an error (exit 1) naming the stage, after the
/// usual ordered shutdown — it never runs on without it (finding 7: `interval = "0s"` once
/// killed the monitor and left the daemon running, exiting 0).
#[test]
fn a_stage_that_panics_stops_the_daemon_loudly() {
    let base = Base::new();
    let cfg = base.path().join("gemba.toml");
    for stage in [
        "monitor",
        "retention",
        "dispatcher",
        "camera press-1",
        "model worker",
    ] {
        std::fs::write(&cfg, toml::to_string(&base.table()).unwrap()).unwrap();
        let mut d = spawn(&cfg, &[("GEMBA_FAULT_PANIC", stage)]);
        let status = d
            .wait_exit(Duration::from_secs(180))
            .unwrap_or_else(|| panic!("{stage}: the daemon ran on without its stage"));
        let lines = d.lines();
        assert_eq!(status.code(), Some(1), "{stage}: {lines:?}");
        let last = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("gemba: error: "))
            .unwrap_or_else(|| panic!("{stage}: {lines:?}"));
        assert!(
            last.contains(&format!("stage {stage}: panicked: injected fault")),
            "{stage}: {last}"
        );
    }
}

/// A bad value from the board profile is reported in the profile, by key; the same key set in
/// the config is reported in the config (the config wins the merge).
#[test]
fn a_bad_value_is_reported_in_the_file_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let boards = dir.path().join("board");
    std::fs::create_dir(&boards).unwrap();
    std::fs::write(
        boards.join("tiny-board.toml"),
        "[store]\ncheck_every = \"0s\"\n[monitor]\nqueue = 4\n",
    )
    .unwrap();
    let cfg = dir.path().join("gemba.toml");
    let check = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = gemba()
            .args(["config", "check"])
            .arg(&cfg)
            .env("GEMBA_BOARD_DIR", &boards)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = check("board = \"tiny-board\"\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: store.check_every: \"0s\" is out of range",
            boards.join("tiny-board.toml").display()
        )),
        "{err}"
    );
    let (code, err) =
        check("board = \"tiny-board\"\n[store]\ncheck_every = \"1m\"\n[monitor]\nqueue = 0\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: monitor.queue: 0 is out of range 1–1024",
            cfg.display()
        )),
        "{err}"
    );
    let (code, err) = check("board = \"tiny-board\"\n[store]\ncheck_every = \"1m\"\n");
    assert_eq!(code, Some(0), "{err}");
}
