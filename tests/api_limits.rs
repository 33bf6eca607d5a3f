//! The API's HTTP limits against the real daemon, tried as a hostile or careless client would:
//! slowloris connections, more connections than the cap, requests hyper cannot parse, wrong
//! methods and routes, a lower-case `bearer`, a report that fails, and a slow camera.

mod api_common;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use api_common::*;
use serde_json::Value;

const TOKEN: &str = "f00dfeedcafe4c0ffee0123456789abc";

/// The body of a raw HTTP response, as JSON (panics with the response when it is not).
fn json_body(response: &str) -> Value {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {response:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"))
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let (_, text) = d.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// True when the peer has closed the connection (EOF or reset), within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer before the close is fine
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout_and_counted() {
    let d = Daemon::start("header_timeout = \"1s\"\nmax_connections = 256");
    // 100 connections: half send a request line and then one header byte a second (never
    // finishing), half send nothing at all.
    let t = Instant::now();
    let mut conns: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .unwrap();
            }
            s
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        for s in conns.iter_mut().step_by(2) {
            let _ = s.write_all(b"a");
        }
    }
    // All are closed by the daemon within a few seconds of the 1 s timeout.
    for (i, s) in conns.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "connection {i} still open after {:?}",
            t.elapsed()
        );
    }
    assert!(t.elapsed() < Duration::from_secs(15));
    d.wait_until(Duration::from_secs(5), |d| {
        metric(d, "gemba_api_connections_timed_out_total") >= 100.0
    });
    // An ordinary client is served meanwhile and after.
    let (code, _) = d.get_json("/health");
    assert_eq!(code, 200);
}

#[test]
fn a_body_that_does_not_arrive_within_the_body_timeout_gets_a_json_408() {
    let d = Daemon::start("body_timeout = \"1s\"");
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.write_all(b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"text\": \"Wh")
        .unwrap();
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "after {:?}: {text}",
        t.elapsed()
    );
    assert!(
        json_body(&text)["error"]
            .as_str()
            .unwrap()
            .contains("api.body_timeout"),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn connections_past_the_cap_get_a_json_503_and_are_counted() {
    let d = Daemon::start("max_connections = 8\nheader_timeout = \"30s\"");
    // Hold the cap's 8 slots with idle connections (the test client's pooled connection, if
    // any, only makes the daemon fuller).
    let held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&d.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, text) = raw_request(&d.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 503, "{text}");
    let e = json_body(&text)["error"].as_str().unwrap().to_string();
    assert!(e.contains("api.max_connections") && e.contains('8'), "{e}");
    drop(held);
    // Slots come back once the idle connections are gone.
    d.wait_until(Duration::from_secs(10), |d| {
        raw_request(
            &d.addr,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .0 == 200
    });
    assert!(metric(&d, "gemba_api_connections_refused_total") >= 1.0);
}

#[test]
fn every_error_status_has_a_json_body() {
    let d = Daemon::start("");
    let long_uri = format!(
        "GET /reports?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let huge_headers = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(600_000)
    );
    let cases: Vec<(String, u16)> = vec![
        ("GET /no-such-route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 404),
        ("DELETE /ask HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 405),
        ("GET /ask HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 405),
        ("GET /reports/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400),
        (
            "POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
                .into(),
            413,
        ),
        ("POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".into(), 415),
        (long_uri, 414),
        (huge_headers, 431),
        ("GARBAGE\r\n\r\n".into(), 400),
    ];
    for (req, want) in cases {
        let (code, text) = raw_request(&d.addr, req.as_bytes());
        let shown = &req[..req.len().min(60)];
        assert_eq!(code, want, "{shown}: {}", &text[..text.len().min(300)]);
        let v = json_body(&text);
        assert!(!v["error"].as_str().unwrap().is_empty(), "{shown}: {v}");
    }
    // The daemon is fine afterwards.
    assert_eq!(d.get_json("/health").0, 200);
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let d = Daemon::start(&format!("token = \"{TOKEN}\""));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut r = d
            .agent
            .get(d.url("/status"))
            .header("Authorization", &format!("{scheme} {TOKEN}"))
            .call()
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{scheme}: {}",
            r.body_mut().read_to_string().unwrap()
        );
    }
    let r = d
        .agent
        .get(d.url("/status"))
        .header("Authorization", &format!("bearer {}", TOKEN.to_uppercase()))
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the token itself is case-sensitive"
    );
    let r = d
        .agent
        .get(d.url("/status"))
        .header("Authorization", &format!("Basic {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn a_failed_report_closes_with_its_error_and_is_counted_as_incomplete() {
    // The demo model hears audio, and refuses a clip shorter than one analysis frame: the
    // question is queued, its report started, and the model fails on it.
    let mut d = Daemon::start_with("", |_| common::root().join("models/demo"));
    let wav = {
        let mut out = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..100 {
            w.write_sample((i * 97 % 2000) as i16).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    };
    use base64::Engine as _;
    let audio = base64::engine::general_purpose::STANDARD.encode(&wav);
    let (code, v) = d.post_json(
        "/ask",
        &serde_json::json!({ "text": "What did you hear?", "audio": audio }),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["report_id"].as_str().unwrap();
    let closed = d.events(id, None).pop().unwrap();
    assert_eq!(closed.event, "closed");
    assert_eq!(closed.data["complete"], false, "{:?}", closed.data);
    let e = closed.data["error"]
        .as_str()
        .unwrap_or_else(|| panic!("closed without its error: {:?}", closed.data));
    assert!(e.contains("model failed"), "{e}");
    // One good answer as well, then the shutdown line counts 2 reports, 1 incomplete.
    let ok = d.ask("What is the pressure on press 1?", &[]);
    assert_eq!(d.events(&ok, None).pop().unwrap().data["complete"], true);
    assert!(d.stop().success());
    let lines = d.stderr.lock().unwrap().clone();
    let last = lines
        .iter()
        .rev()
        .find(|l| l.contains("reports written"))
        .expect("a shutdown line");
    assert!(last.contains("2 reports written (1 incomplete)"), "{last}");
}

#[test]
fn a_working_slow_camera_is_not_called_stalled() {
    // A second replay camera at one frame every 5 s (0.2 fps), beside the test's own.
    let d = Daemon::start(
        "[[cameras]]\nname = \"yard\"\nkind = \"replay\"\nsource = \"frames\"\nfps = 0.2\nmonitor = false\nprompt = \"x\"",
    );
    let state = |d: &Daemon| {
        let (_, v) = d.get_json("/health");
        let cams = v["cameras"].as_array().unwrap().clone();
        cams.into_iter().find(|c| c["name"] == "yard").unwrap()
    };
    // Over 12 s (more than two of its intervals) it is `ok` at every look.
    let t = Instant::now();
    let mut looks = 0;
    while t.elapsed() < Duration::from_secs(12) {
        let c = state(&d);
        assert_eq!(c["state"], "ok", "after {:?}: {c}", t.elapsed());
        looks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(looks >= 20);
    assert!(state(&d)["frames"].as_u64().unwrap() >= 3);
}
