//! The live board page (`GET /`) in headless Chromium (Debian's `chromium`, installed by
//! scripts/setup test), against a real daemon on 127.0.0.1: the demo model monitoring a replay
//! camera with an alert rule. The test reads the live page over the DevTools protocol while its
//! event stream stays open: every image on it loaded (the camera's latest frame, the reports'
//! thumbnails), the answer in progress grew sentence by sentence, and the camera's rule is shown
//! with its state.
//! With a token set, the page opened with `?access_token=` works and without it is refused.

mod api_common;
mod common;

use std::path::Path;
use std::time::Duration;

use api_common::Daemon;

use api_common::LAMP_RULE as RULES;

fn demo_config(dir: &Path, api: &str) -> std::path::PathBuf {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // The lamp goes green → red → green (tests/fixtures/alert_lamp), looping.
    for e in std::fs::read_dir(common::root().join("tests/fixtures/alert_lamp")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jpg") {
            std::fs::copy(&p, frames.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 40
[providers]
order = ["cpu"]
[api]
{api}
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 0.25
prompt = "Give me a status report."
{RULES}"#,
            model = common::root().join("models/demo").display()
        ),
    )
    .unwrap();
    cfg
}

/// Headless Chromium on a page, driven over the DevTools protocol (a WebSocket): the test reads
/// the live DOM as often as it likes while the page's event streams stay open.
struct Browser {
    child: std::process::Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        use std::io::BufRead;
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(common::chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("ws://127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .map(String::from)
            })
            .expect("chromium printed its DevTools address");
        std::thread::spawn(move || lines.for_each(drop));
        let agent = api_common::agent();
        let target = || -> Option<String> {
            let list: serde_json::Value = agent
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()?
                .body_mut()
                .read_json()
                .ok()?;
            let t = list.as_array()?.iter().find(|t| t["type"] == "page")?;
            Some(t["webSocketDebuggerUrl"].as_str()?.to_string())
        };
        let page = (0..100)
            .find_map(|_| {
                let t = target();
                if t.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                t
            })
            .expect("the page's DevTools target");
        let (ws, _) = tungstenite::connect(page.as_str()).unwrap();
        Browser {
            child,
            ws,
            next: 1,
            _profile: profile,
        }
    }

    /// Evaluates `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        let msg = serde_json::json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expr, "returnByValue": true}});
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .unwrap();
        loop {
            let m = self.ws.read().unwrap();
            if let tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows now.
const READ_PAGE: &str = r#"JSON.stringify({
  conn: document.getElementById("conn").className,
  sentences: +(document.body.dataset.sentences || 0),
  images: [...document.images].map((i) => ({ src: i.src, cls: i.className,
      loaded: i.complete && i.naturalWidth > 0, marked: i.dataset.loaded || null })),
  rules: [...document.querySelectorAll("li[data-rule]")].map((li) => ({ camera:
      li.closest("section").dataset.camera, rule: li.dataset.rule, state: li.dataset.state,
      cls: li.className, history: li.dataset.history, text: li.textContent })),
  answering: [...document.querySelectorAll(".answering")].map((e) => e.textContent),
})"#;

#[test]
fn the_board_shows_frames_states_and_the_answer_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let token = "board-test-token-0123456789abcdef";
    let cfg = demo_config(dir.path(), &format!("token = \"{token}\""));
    // Tokens at a board's pace, so the sentences of an answer come apart in time.
    let mut d =
        Daemon::start_config_token(dir, &cfg, token, &[("GEMBA_TEST_TOKEN_DELAY_MS", "40")]);
    // A report exists before the page opens, so the report list has a thumbnail to load.
    d.wait_until(Duration::from_secs(180), |d| {
        let (_, v) = d.get_json("/reports?trigger=monitor");
        v["reports"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["status"]["state"] == "complete" && r["first_image"].is_u64())
        })
    });
    // Without the token the page is refused like every other route.
    let (code, _) = api_common::raw_request(&d.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 401);
    // A wrong token in the query is refused; the right one works on a route with a strict query
    // (it is taken out before the handler reads its parameters).
    let (code, _) = api_common::raw_request(
        &d.addr,
        b"GET /reports?limit=1&access_token=wrong-token-0123456789 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 401);
    let (code, body) = api_common::raw_request(
        &d.addr,
        format!("GET /reports?limit=1&access_token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(code, 200, "{body}");

    let mut b = Browser::open(&d.url(&format!("/?access_token={token}")));
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let t = std::time::Instant::now();
    let done = |p: &serde_json::Value| {
        let imgs = p["images"].as_array().unwrap();
        p["conn"] == "live"
            && p["sentences"].as_u64() >= Some(2)
            && imgs.iter().any(|i| i["cls"] == "frame")
            && imgs
                .iter()
                .any(|i| i["src"].as_str().unwrap().contains("/media/"))
            && imgs
                .iter()
                .all(|i| i["loaded"] == true && i["marked"] == "yes")
    };
    // The answer's text as read so far (non-empty reads, in order).
    let mut texts: Vec<String> = Vec::new();
    let grew = |texts: &[String]| {
        texts
            .windows(2)
            .any(|w| w[1].len() > w[0].len() && w[1].starts_with(w[0].as_str()))
    };
    let page = loop {
        let v = b.eval(READ_PAGE);
        // Before the page has loaded there is nothing to read yet.
        let Some(text) = v.as_str() else {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the page never loaded"
            );
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let p: serde_json::Value = serde_json::from_str(text).unwrap();
        if let Some(a) = p["answering"][0].as_str().filter(|a| !a.is_empty()) {
            if texts.last().map(String::as_str) != Some(a) {
                texts.push(a.to_string());
            }
        }
        if done(&p) && grew(&texts) {
            break p;
        }
        seen.push(p);
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the board did not get there in 180 s; last: {:#}",
            seen.last().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The camera and its rule, with a state class the stylesheet colours.
    let rules = page["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{page:#}");
    let r = &rules[0];
    assert_eq!(
        (r["camera"].as_str(), r["rule"].as_str()),
        (Some("press-1"), Some("lamp-red"))
    );
    let state = r["state"].as_str().unwrap();
    assert!(
        ["ok", "pending", "raised", "clearing"].contains(&state),
        "{r}"
    );
    assert_eq!(r["cls"], format!("state-{state}"));
    assert!(r["text"].as_str().unwrap().contains("(critical)"), "{r}");
    // The answer came in sentence by sentence: a read showed a text that a later read continued
    // (the loop above waited for it).
    assert!(grew(&texts), "{texts:?}");
    // States change on the page as the scene changes (the page is never reloaded: the event
    // stream moves it): the lamp turns red, the rule is shown raised, then green again, and it
    // leaves raised, each change one the state machine makes.
    let mut states = vec![state.to_string()];
    let t = std::time::Instant::now();
    let left_raised = |s: &[String]| {
        s.iter()
            .position(|x| x == "raised")
            .is_some_and(|i| s[i + 1..].iter().any(|x| x != "raised"))
    };
    while !left_raised(&states) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the page's rule went through {states:?} in 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        let v = b.eval(READ_PAGE);
        let p: serde_json::Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
        let r = &p["rules"][0];
        let s = r["state"].as_str().unwrap().to_string();
        assert_eq!(r["cls"], format!("state-{s}"), "{r}");
        if states.last() != Some(&s) {
            states.push(s);
        }
    }
    for w in states.windows(2) {
        let allowed = match w[0].as_str() {
            "ok" => ["pending"].as_slice(),
            "pending" => &["raised", "ok"],
            "raised" => &["clearing"],
            "clearing" => &["ok", "raised"],
            other => panic!("unknown state {other}"),
        };
        assert!(allowed.contains(&w[1].as_str()), "{states:?}");
    }
    drop(b);
    assert!(d.stop().success());
}
