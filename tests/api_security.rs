//! The local API's exposure and bounds, against the real daemon.
//!
//! Only loopback traffic is allowed on the machines these tests run on, so the "non-loopback"
//! rule is exercised where it acts — before anything is bound: `--listen 0.0.0.0:0`, `[::]` and
//! a TEST-NET address (192.0.2.10, never assigned) must make the daemon refuse to start. The
//! token itself is checked on 127.0.0.1: a configured token is required on every route,
//! whatever the address.

mod api_common;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api_common::*;
use serde_json::{json, Value};

const TOKEN: &str = "f00dfeedcafe4c0ffee0123456789abc";

#[test]
fn a_non_loopback_address_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", &tiny_model());
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.10:8470"] {
        let t = Instant::now();
        let out = gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--listen", addr])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{addr}: the daemon started");
        assert!(
            err.contains(&format!("refusing to serve the API on {addr}"))
                && err.contains("api.token"),
            "{addr}: {err}"
        );
        assert!(
            !err.contains("API listening"),
            "{addr}: it bound before refusing: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{addr}: refused only after loading the model"
        );
    }
    // The same from the config file, named by key; and `config check` says so too.
    let cfg2 = write_config(dir.path(), "listen = \"0.0.0.0:8470\"", &tiny_model());
    for args in [vec!["config", "check"], vec!["run", "--config"]] {
        let out = gemba()
            .args(&args)
            .arg(&cfg2)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("gemba.toml: api.listen: refusing to serve the API on 0.0.0.0:8470"),
            "{err}"
        );
    }
    // With a token from a file it is accepted, and `config check` never prints the token.
    std::fs::write(dir.path().join("api-token"), format!("{TOKEN}\n")).unwrap();
    let cfg3 = write_config(
        dir.path(),
        "listen = \"0.0.0.0:8470\"\ntoken_file = \"api-token\"",
        &tiny_model(),
    );
    let out = gemba()
        .args(["config", "check"])
        .arg(&cfg3)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["api"]["token"], "(set)");
    assert_eq!(v["api"]["listen"], "0.0.0.0:8470");
    assert!(!text.contains(TOKEN));
    // A short token is refused with the reason.
    let cfg4 = write_config(dir.path(), "token = \"hunter2\"", &tiny_model());
    let out = gemba()
        .args(["config", "check"])
        .arg(&cfg4)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("api.token: the token is 7 characters; use at least 16"));
}

#[test]
fn a_configured_token_is_required_on_every_route() {
    let d = Daemon::start(&format!("token = \"{TOKEN}\""));
    let mut wrong = TOKEN.to_string();
    wrong.replace_range(TOKEN.len() - 1.., "d");
    let a = agent();
    let id = d.ask("What is the pressure on press 1?", &[]);
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/health".into()),
        ("GET", "/status".into()),
        ("GET", "/metrics".into()),
        ("GET", "/reports".into()),
        ("GET", format!("/reports/{id}")),
        ("GET", format!("/reports/{id}.html")),
        ("GET", format!("/ask/{id}/events")),
        ("POST", "/ask".into()),
        ("POST", "/model/unload".into()),
        ("POST", "/model/reload".into()),
        ("GET", "/no/such/route".into()),
    ];
    for (method, path) in &routes {
        for auth in [
            None,
            Some(format!("Bearer {wrong}")),
            Some(format!("Basic {TOKEN}")),
            Some("Bearer ".to_string()),
            Some(TOKEN.to_string()),
        ] {
            let mut req = ureq::http::Request::builder()
                .method(*method)
                .uri(d.url(path));
            if let Some(h) = &auth {
                req = req.header("Authorization", h);
            }
            let mut r = a.run(req.body(Vec::<u8>::new()).unwrap()).unwrap();
            assert_eq!(r.status().as_u16(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                r.headers().get("www-authenticate").unwrap(),
                "Bearer realm=\"gemba\""
            );
            let body: Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains("bearer token"));
        }
    }
    // Nothing was unloaded by the refused requests; with the token every route answers.
    let (code, h) = d.get_json("/health");
    assert_eq!((code, h["ready"].as_bool()), (200, Some(true)));
    assert_eq!(d.get("/status").0, 200);
    assert_eq!(d.get("/reports").0, 200);
    assert!(d.events(&id, None).last().unwrap().data["complete"]
        .as_bool()
        .unwrap());
    let (_, m) = d.get("/metrics");
    let refused: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gemba_api_unauthorized_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refused, (routes.len() * 5) as f64);
}

#[test]
fn paths_that_are_not_ids_never_reach_the_file_system() {
    let d = Daemon::start("");
    let id = d.ask("What is the pressure on press 1?", &["press-1"]);
    d.events(&id, None);
    // Sent raw, so no client normalises the dots or the encodings away.
    let cases: Vec<(String, u16)> = vec![
        ("/reports/..%2f..%2fetc/passwd".into(), 404),
        ("/reports/..%2f..%2fetc%2fpasswd".into(), 400),
        ("/reports/../../etc/passwd".into(), 404),
        ("/reports/..".into(), 400),
        (
            "/reports/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
            400,
        ),
        (
            "/reports/%2e%2e%2f%2e%2e%2fetc%2fpasswd/media/0".into(),
            400,
        ),
        ("/reports/..%2f..%2fetc%2fpasswd.html".into(), 400),
        (
            format!("/reports/{id}/media/..%2f..%2f..%2f..%2fetc%2fpasswd"),
            400,
        ),
        (format!("/reports/{id}/media/0%00"), 400),
        (format!("/reports/{id}/media/%30"), 200),
        (format!("/reports/{id}%00.html"), 400),
        (format!("/reports/{}", id.replace('T', "%54")), 200),
        (
            "/reports/20261124T101530Z-3f2a%2f..%2f..%2findex.sqlite".into(),
            400,
        ),
        ("/ask/..%2f..%2findex.sqlite/events".into(), 400),
        ("/index.sqlite".into(), 404),
        ("/media/".into(), 404),
        ("//etc/passwd".into(), 404),
    ];
    for (path, want) in &cases {
        let (code, text) = raw_request(
            &d.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(code, *want, "{path}: {text}");
        assert!(
            !text.contains("root:") && !text.contains("SQLite format"),
            "{path} leaked a file: {text}"
        );
    }
}

#[test]
fn oversized_bodies_are_refused_before_they_are_read() {
    let d = Daemon::start("max_body = \"64KiB\"");
    // A declared length over the limit: refused on the headers alone (no body is sent at all).
    let t = Instant::now();
    let (code, text) = raw_request(
        &d.addr,
        b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
    );
    assert_eq!(code, 413, "{text}");
    assert!(
        text.contains("application/json") && text.contains("\"error\""),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // A chunked body that grows past the limit is cut off once it passes it.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let chunk = vec![b' '; 16 * 1024];
    let mut sent = 0;
    for _ in 0..64 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|_| s.write_all(&chunk))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "after {sent} bytes: {text}"
    );
    // A base64 image that makes the JSON too big, through an ordinary client.
    let big = "A".repeat(80 * 1024);
    let (code, v) = d.post_json(
        "/ask",
        &json!({ "text": "What is the pressure on press 1?", "image": big }),
    );
    assert_eq!(code, 413, "{v}");
    // Under the limit, the body is read and judged on its content.
    let (code, v) = d.post_json("/ask", &json!({ "text": "x".repeat(20 * 1024) }));
    assert_eq!(code, 422, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("20480 characters; at most 16384"));
    // The daemon is fine afterwards.
    let id = d.ask("What is the pressure on press 1?", &[]);
    assert_eq!(d.events(&id, None).last().unwrap().data["complete"], true);
}

/// Peak resident memory allowed the daemon through the flood (KiB), and how much of it the
/// flood may add. The tiny model's daemon idles at about 62 MiB (ONNX Runtime, the sessions, the
/// async runtime); 1,000 refused or queued asks added about 5 MiB when this was written.
const FLOOD_PEAK_KIB: u64 = 256 * 1024;
const FLOOD_GROWTH_KIB: u64 = 48 * 1024;

#[test]
fn a_flood_of_a_thousand_asks_is_bounded_and_the_daemon_stays_healthy() {
    let d = Daemon::start("max_asks = 4");
    let id = d.ask("What is the pressure on press 1?", &["press-1"]);
    d.events(&id, None);
    let (hwm_before, rss_before) = d.memory_kib();
    let body =
        json!({ "text": "What is the pressure on press 1?", "cameras": ["press-1"] }).to_string();
    let threads = 50;
    let per_thread = 20;
    let t = Instant::now();
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let body = body.clone();
                let d = &d;
                s.spawn(move || {
                    let a = agent();
                    (0..per_thread)
                        .map(|_| {
                            let r = a
                                .post(d.url("/ask"))
                                .content_type("application/json")
                                .send(&body)
                                .unwrap();
                            let retry = r
                                .headers()
                                .get("retry-after")
                                .map(|v| v.to_str().unwrap().to_string());
                            (r.status().as_u16(), retry)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let took = t.elapsed();
    let accepted = results.iter().filter(|(c, _)| *c == 202).count();
    let refused: Vec<&(u16, Option<String>)> = results.iter().filter(|(c, _)| *c == 429).collect();
    let (hwm_after, rss_after) = d.memory_kib();
    eprintln!(
        "flood: {} asks in {:.1} s: {accepted} accepted, {} refused with 429; daemon RSS {} → {} KiB, peak {} → {} KiB",
        results.len(),
        took.as_secs_f64(),
        refused.len(),
        rss_before,
        rss_after,
        hwm_before,
        hwm_after
    );
    assert_eq!(results.len(), threads * per_thread);
    assert_eq!(
        accepted + refused.len(),
        results.len(),
        "only 202 and 429: {:?}",
        results
            .iter()
            .filter(|(c, _)| *c != 202 && *c != 429)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(accepted >= 4, "some asks got through");
    assert!(
        refused.len() >= 500,
        "the bound was hit: {} refused",
        refused.len()
    );
    for (_, retry) in &refused {
        let secs: u64 = retry
            .as_deref()
            .expect("429 carries Retry-After")
            .parse()
            .unwrap();
        assert!((1..=300).contains(&secs));
    }
    assert!(
        hwm_after < FLOOD_PEAK_KIB,
        "peak RSS {hwm_after} KiB over the bound {FLOOD_PEAK_KIB} KiB"
    );
    assert!(
        hwm_after.saturating_sub(rss_before) < FLOOD_GROWTH_KIB,
        "the flood grew the daemon from {rss_before} to a peak of {hwm_after} KiB"
    );

    // Afterwards: healthy, answering, every accepted ask became a complete report.
    d.wait_until(Duration::from_secs(60), |d| {
        d.get_json("/status").1["queue"]["api_asks"] == 0
    });
    let (code, h) = d.get_json("/health");
    assert_eq!((code, h["ready"].as_bool()), (200, Some(true)));
    let id = d.ask("What is the pressure on press 1?", &[]);
    assert!(d.events(&id, None).iter().any(|e| e.event == "sentence"));
    let (_, list) = d.get_json("/reports?limit=500&status=complete");
    assert_eq!(list["reports"].as_array().unwrap().len(), accepted + 2);
    let (_, m) = d.get("/metrics");
    let busy: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gemba_api_asks_rejected_total{reason=\"busy\"} "))
        .unwrap()
        .parse()
        .unwrap();
    let full: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gemba_api_asks_rejected_total{reason=\"queue_full\"} "))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0);
    assert_eq!((busy + full) as usize, refused.len());
}

#[test]
fn a_stalled_event_stream_does_not_hold_up_the_model() {
    // 50 ms a token: the first answer (~20 tokens) streams for about a second, so its stalled
    // client is seen connected (the tiny model alone answers in a millisecond or two).
    let d = Daemon::start_slow("sse_buffer = 4", 50);
    let id = d.ask("What is the pressure on press 1?", &[]);
    // A client that asks for the stream and never reads a byte of it.
    let mut stalled = TcpStream::connect(&d.addr).unwrap();
    stalled
        .write_all(format!("GET /ask/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    d.wait_until(Duration::from_secs(10), |d| {
        d.get("/metrics")
            .1
            .lines()
            .any(|l| l == "gemba_api_sse_clients 1")
    });
    // Others are served meanwhile, in full.
    let t = Instant::now();
    for _ in 0..5 {
        let id = d.ask("What is the pressure on press 1?", &["press-1"]);
        let ev = d.events(&id, None);
        assert_eq!(ev.last().unwrap().data["complete"], true);
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    drop(stalled);
    d.wait_until(Duration::from_secs(10), |d| {
        d.get("/metrics")
            .1
            .lines()
            .any(|l| l == "gemba_api_sse_clients 0")
    });
}

#[test]
fn stopping_with_an_open_stream_exits_cleanly_and_the_stream_ends_with_its_answer() {
    let mut d = Daemon::start("");
    let id = d.ask("What is the pressure on press 1?", &[]);
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        format!("GET /ask/{id}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).to_string()
    });
    // Let the request reach the server before the signal (the stream may already be complete:
    // the tiny model answers in milliseconds).
    std::thread::sleep(Duration::from_millis(300));
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    let text = reader.join().unwrap();
    assert!(
        text.contains("event: closed"),
        "the stream ended with its answer: {text}"
    );
}
