//! Helpers for the API tests: a real `gemba run` on replay cameras and the tiny text model,
//! listening on a free loopback port; a small HTTP client; server-sent events read line by line;
//! raw HTTP/1.1 for what a client library would normalise away.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The alert rule the alert tests share: press-1's lamp is red (critical), raise and clear after
/// two looks.
pub const LAMP_RULE: &str = r#"
[[cameras.alerts]]
name = "lamp-red"
question = "What colour is the status lamp?"
schema = { type = "object", properties = { lamp = { enum = ["green", "amber", "red", "off", "none"] } }, required = ["lamp"] }
when = 'lamp == "red"'
raise_after = 2
clear_after = 2
severity = "critical"
"#;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_model() -> PathBuf {
    root().join("models/tiny-qwen2/fp32")
}

pub fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

pub fn write_frames(dir: &Path) {
    crate::common::write_replay_frames(dir, 4);
}

/// The config the daemon tests run with: one replay camera that is captured but not
/// monitored (so every report comes from the test), plus `api` lines under `[api]`.
pub fn write_config(dir: &Path, api: &str, model: &Path) -> PathBuf {
    write_config_limit(dir, api, model, 40)
}

/// [`write_config`] with `model.max_new_tokens` set to `max_new_tokens`.
pub fn write_config_limit(dir: &Path, api: &str, model: &Path, max_new_tokens: usize) -> PathBuf {
    write_frames(&dir.join("frames"));
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = {max_new_tokens}
[providers]
order = ["cpu"]
intra_op_threads = 1
[api]
{api}
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 5.0
monitor = false
prompt = "What is the pressure on press 1?"
"#,
            model = model.display()
        ),
    )
    .unwrap();
    cfg
}

/// A running daemon; SIGTERM and wait on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub token: Option<String>,
    pub agent: ureq::Agent,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl Daemon {
    pub fn start(api: &str) -> Daemon {
        Self::start_with(api, |_| tiny_model())
    }

    /// `prepare` gets the daemon's directory before start and returns the model path.
    pub fn start_with(api: &str, prepare: impl FnOnce(&Path) -> PathBuf) -> Daemon {
        Self::start_full(api, prepare, &[])
    }

    /// The demo model (models/demo), answers up to 160 tokens: its region markers
    /// (`[cam:NAME box:…]`, ~20 tokens each) make a one-frame answer run to 60–150 tokens.
    pub fn start_demo(api: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config_limit(dir.path(), api, &root().join("models/demo"), 160);
        Self::spawn(dir, &cfg, api, &[])
    }

    /// The tiny model decoding at `ms` per token (a board's pace), so an answer's stream stays
    /// open long enough to be seen open.
    pub fn start_slow(api: &str, ms: u64) -> Daemon {
        Self::start_full(
            api,
            |_| tiny_model(),
            &[("GEMBA_TEST_TOKEN_DELAY_MS", &ms.to_string())],
        )
    }

    pub fn start_full(
        api: &str,
        prepare: impl FnOnce(&Path) -> PathBuf,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let model = prepare(dir.path());
        let cfg = write_config(dir.path(), api, &model);
        Self::spawn(dir, &cfg, api, env)
    }

    /// `gemba run --config cfg` (a config the caller wrote into `dir`); `api` is its `[api]`
    /// section, read for the bearer token.
    pub fn spawn(dir: tempfile::TempDir, cfg: &Path, api: &str, env: &[(&str, &str)]) -> Daemon {
        let token = api
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("token = \"")
                    .and_then(|t| t.strip_suffix('"'))
            })
            .map(String::from);
        Self::launch(dir, cfg, token, env)
    }

    /// A daemon on a config the test wrote itself (in `dir`, which the daemon keeps).
    pub fn start_config(dir: tempfile::TempDir, cfg: &Path) -> Daemon {
        Self::launch(dir, cfg, None, &[])
    }

    /// As [`Daemon::start_config`], for a config with `token` set (requests carry it), with
    /// `env` for the daemon.
    pub fn start_config_token(
        dir: tempfile::TempDir,
        cfg: &Path,
        token: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::launch(dir, cfg, Some(token.to_string()), env)
    }

    fn launch(
        dir: tempfile::TempDir,
        cfg: &Path,
        token: Option<String>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut child = gemba()
            .args(["run", "--config"])
            .arg(cfg)
            .args(["--listen", "127.0.0.1:0"])
            .env("GEMBA_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&stderr);
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("gemba: API listening on http://") {
                        addr = Some(rest.split_whitespace().next().unwrap().to_string());
                    }
                    // The pipeline (and so the API's handle) exists once the daemon says so.
                    if line.starts_with("gemba: serving") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the daemon did not start: {:?}", stderr.lock().unwrap());
                }
            }
        }
        let addr = addr.expect("the API address was printed before serving");
        let d = Daemon {
            child,
            addr,
            dir,
            stderr,
            token,
            agent: agent(),
        };
        // Serving starts right after the line above; wait until the cameras have a frame.
        d.wait_until(Duration::from_secs(20), |d| {
            let (code, v) = d.get_json("/health");
            code == 200
                && v["cameras"]
                    .as_array()
                    .is_some_and(|c| c.iter().all(|c| c["frames"].as_u64() > Some(0)))
        });
        d
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn auth(
        &self,
        r: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match &self.token {
            Some(t) => r.header("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self.auth(self.agent.get(self.url(path))).call().unwrap();
        let code = r.status().as_u16();
        (
            code,
            r.body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_string()
                .unwrap(),
        )
    }

    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.get(path);
        (
            code,
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}")),
        )
    }

    pub fn get_bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut r = self.auth(self.agent.get(self.url(path))).call().unwrap();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let code = r.status().as_u16();
        (code, ctype, r.body_mut().read_to_vec().unwrap())
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut req = self.agent.post(self.url(path));
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut r = req.send_json(body).unwrap();
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            code,
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}")),
        )
    }

    pub fn post_empty(&self, path: &str) -> (u16, serde_json::Value) {
        let mut req = self.agent.post(self.url(path));
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut r = req.send_empty().unwrap();
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            code,
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}")),
        )
    }

    /// Asks and returns the report id.
    pub fn ask(&self, text: &str, cameras: &[&str]) -> String {
        let (code, v) = self.post_json(
            "/ask",
            &serde_json::json!({ "text": text, "cameras": cameras }),
        );
        assert_eq!(code, 202, "POST /ask: {v}");
        v["report_id"].as_str().unwrap().to_string()
    }

    /// Every event of an ask's stream, to its end.
    pub fn events(&self, id: &str, last_event_id: Option<u64>) -> Vec<SseEvent> {
        let mut req = self.auth(self.agent.get(self.url(&format!("/ask/{id}/events"))));
        if let Some(l) = last_event_id {
            req = req.header("Last-Event-ID", &l.to_string());
        }
        let r = req.call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        read_sse(BufReader::new(r.into_body().into_reader()))
    }

    /// Polls until `f` holds (panics after `limit`).
    pub fn wait_until(&self, limit: Duration, f: impl Fn(&Daemon) -> bool) {
        let t = Instant::now();
        while !f(self) {
            assert!(
                t.elapsed() < limit,
                "condition not met within {limit:?}; stderr: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `VmHWM` (peak resident set) and `VmRSS` of the daemon, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |n: &str| {
            s.lines()
                .find(|l| l.starts_with(n))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM, then wait (kill after 30 s); returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("the daemon did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let t = Instant::now();
            while self.child.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(15) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: serde_json::Value,
}

/// Reads events until the stream ends, strictly: every field line is `id:`, `event:`, `data:`
/// or a `:` comment, and every event has data that is JSON.
pub fn read_sse(r: impl BufRead) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let (mut id, mut event, mut data): (Option<u64>, Option<String>, Vec<String>) =
        (None, None, Vec::new());
    for line in r.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if !data.is_empty() {
                let text = data.join("\n");
                out.push(SseEvent {
                    id,
                    event: event.clone().unwrap_or_else(|| "message".into()),
                    data: serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {text}")),
                });
            }
            (id, event, data) = (None, None, Vec::new());
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.parse().unwrap()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            other => panic!("unexpected SSE field {other:?} in {line:?}"),
        }
    }
    out
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status code and the whole response.
pub fn raw_request(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before the whole request is written.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}
