//! The local API against the real daemon (`gemba run` on a replay camera with the tiny text
//! model, `--listen 127.0.0.1:0`): asking and following the answer as server-sent events,
//! browsing reports, metrics as strict OpenMetrics text, readiness across unload and reload.

mod api_common;
mod common;

use std::collections::BTreeMap;

use api_common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the pressure on press 1?";

fn sentences(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "sentence")
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_ask_streams_its_sentences_in_order_and_they_are_the_report() {
    let d = Daemon::start("");
    let id = d.ask(QUESTION, &["press-1"]);
    let events = d.events(&id, None);

    // Ids count up from 0 without gaps; names and data are `gemba ask --json`'s.
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (0..events.len() as u64).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(e.data["event"], e.event.as_str(), "{e:?}");
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let first_sentence = kinds
        .iter()
        .position(|k| *k == "sentence")
        .expect("a sentence");
    assert_eq!(kinds[0], "token", "tokens come first");
    assert_eq!(&kinds[kinds.len() - 2..], ["done", "closed"], "{kinds:?}");
    assert!(first_sentence > 0);
    // Sentences arrive in order, 0, 1, 2…, each after the tokens that make it up.
    let sent: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "sentence")
        .map(|e| &e.data)
        .collect();
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s["index"], i);
        let end = s["token_span"][1].as_u64().unwrap();
        let pos = events
            .iter()
            .position(|e| std::ptr::eq(&e.data, *s))
            .unwrap();
        let tokens_before = events[..pos].iter().filter(|e| e.event == "token").count() as u64;
        assert!(tokens_before >= end, "sentence {i} came before its tokens");
    }
    let texts = sentences(&events);
    assert!(
        texts[0].contains("8.4 bar"),
        "the tiny model's answer: {texts:?}"
    );
    let done = &events[events.len() - 2].data;
    assert_eq!(done["sentences"], texts.len());
    let joined: String = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        joined.trim(),
        done["text"].as_str().unwrap().trim(),
        "the tokens spell the reply"
    );
    let closed = &events[events.len() - 1].data;
    assert_eq!(closed["report_id"], id.as_str());
    assert_eq!(closed["complete"], true);

    // The report holds the same sentences, after the camera's frame.
    let (code, report) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(code, 200);
    assert_eq!(report["format"], "gemba-report/1");
    assert_eq!(report["meta"]["trigger"], "api");
    assert_eq!(report["meta"]["prompt"], QUESTION);
    assert_eq!(report["meta"]["cameras"], json!(["press-1"]));
    assert_eq!(report["status"]["state"], "complete");
    let segs = report["segments"].as_array().unwrap();
    let report_texts: Vec<&str> = segs
        .iter()
        .filter(|s| s["kind"] == "text")
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(report_texts, texts);
    assert_eq!(segs[0]["kind"], "image");
    assert_eq!(segs[0]["camera"], "press-1");

    // A client arriving after the end gets the whole stream again; one resuming after an id
    // gets exactly the rest.
    assert_eq!(d.events(&id, None), events);
    assert_eq!(d.events(&id, Some(3)), events[4..].to_vec());
}

#[test]
fn a_client_connecting_while_the_answer_is_generated_gets_the_backlog_then_the_rest() {
    // A long answer and a deadline-free generation: the stream is opened right after POST /ask
    // returns, while the model is still generating (the report exists before the first token).
    let d = Daemon::start("");
    let ids: Vec<String> = (0..3).map(|_| d.ask(QUESTION, &[])).collect();
    let streams: Vec<Vec<SseEvent>> = std::thread::scope(|s| {
        let hs: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| d.events(id, None)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, ev) in ids.iter().zip(&streams) {
        assert_eq!(ev.last().unwrap().event, "closed", "{id}");
        assert_eq!(
            ev.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
            (0..ev.len() as u64).collect::<Vec<_>>()
        );
        assert!(!sentences(ev).is_empty());
        // The same answer to the same question (greedy decoding).
        assert_eq!(sentences(ev), sentences(&streams[0]));
    }
}

#[test]
fn multipart_asks_carry_an_uploaded_image_and_audio_into_the_report() {
    let d = Daemon::start("");
    // A PNG through multipart, a JPEG through JSON.
    let rgb: Vec<u8> = (0..32 * 24)
        .flat_map(|i| [(i % 32) as u8 * 8, (i / 32) as u8 * 10, 128])
        .collect();
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, 32, 24);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&rgb).unwrap();
    }
    let mut jpg = Vec::new();
    image::RgbImage::from_raw(32, 24, rgb)
        .unwrap()
        .write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let mut wav = std::io::Cursor::new(Vec::new());
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut wav, spec).unwrap();
        for i in 0..8000 {
            w.write_sample(((i as f32 * 0.05).sin() * 8000.0) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
    }
    let boundary = "gemba-test-boundary";
    let mut body = Vec::new();
    let mut part = |name: &str, file: Option<&str>, data: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part("text", None, QUESTION.as_bytes());
    part("cameras", None, b"press-1");
    part("image", Some("shot.png"), &png);
    part("audio", Some("question.wav"), wav.get_ref());
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut r = d
        .agent
        .post(d.url("/ask"))
        .content_type(format!("multipart/form-data; boundary={boundary}"))
        .send(&body[..])
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["report_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = d.events(&id, None);
    assert_eq!(ev.last().unwrap().data["complete"], true);
    let (_, report) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(report["meta"]["cameras"], json!(["press-1", "upload"]));
    let segs = report["segments"].as_array().unwrap();
    let audio = segs
        .iter()
        .find(|s| s["kind"] == "audio")
        .expect("the question's audio is in the report");
    assert_eq!(audio["sample_rate"], 16000);
    assert_eq!(audio["duration_ms"], 500.0);
    let upload = segs
        .iter()
        .find(|s| s["kind"] == "image" && s["camera"] == "upload")
        .expect("the uploaded image");
    assert_eq!(
        (upload["width"].as_u64(), upload["height"].as_u64()),
        (Some(32), Some(24))
    );
    // The same through JSON with base64.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (code, v) = d.post_json(
        "/ask",
        &json!({ "text": QUESTION, "image": b64.encode(&jpg), "audio": b64.encode(wav.get_ref()) }),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["report_id"].as_str().unwrap().to_string();
    d.events(&id, None);
    let (_, report) = d.get_json(&format!("/reports/{id}"));
    assert_eq!(report["meta"]["cameras"], json!(["upload"]));
    // And what is refused, with the reason.
    for (body, want) in [
        (json!({ "text": "  " }), "empty"),
        (
            json!({ "text": QUESTION, "cameras": ["press-9"] }),
            "no camera named \"press-9\"",
        ),
        (
            json!({ "text": QUESTION, "image": "!!!" }),
            "image: not base64",
        ),
        (
            json!({ "text": QUESTION, "image": b64.encode(b"GIF89a....") }),
            "image upload: not a PNG or JPEG",
        ),
        (
            json!({ "text": QUESTION, "audio": b64.encode(b"RIFF") }),
            "audio upload:",
        ),
        (
            json!({ "text": QUESTION, "colour": "red" }),
            "unknown field",
        ),
    ] {
        let (code, v) = d.post_json("/ask", &body);
        assert_eq!(code, 422, "{body} → {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body} → {v}");
    }
    let mut r = d
        .agent
        .post(d.url("/ask"))
        .content_type("text/plain")
        .send("hello")
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("application/json"));
}

#[test]
fn reports_are_listed_filtered_paged_and_served_with_their_media() {
    let d = Daemon::start("");
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        let id = d.ask(QUESTION, &["press-1"]);
        d.events(&id, None);
        ids.push(id);
    }
    let id2 = d.ask(QUESTION, &[]);
    d.events(&id2, None);
    ids.push(id2.clone());

    let (code, list) = d.get_json("/reports");
    assert_eq!(code, 200);
    let listed: Vec<&str> = list["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert!(list["next"].is_null());

    // Pages of one: the cursor walks the same order and ends with null.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/reports?limit=1&cursor={c}"),
            None => "/reports?limit=1".to_string(),
        };
        let (code, page) = d.get_json(&q);
        assert_eq!(code, 200, "{page}");
        paged.extend(
            page["reports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, newest_first);

    // Filters: camera, trigger, status, time.
    let (_, by_cam) = d.get_json("/reports?camera=press-1");
    assert_eq!(
        by_cam["reports"].as_array().unwrap().len(),
        3,
        "the ask without a camera is not listed"
    );
    assert!(by_cam["reports"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["id"] != id2.as_str()));
    let (_, by_trigger) = d.get_json("/reports?trigger=monitor");
    assert_eq!(by_trigger["reports"].as_array().unwrap().len(), 0);
    let (_, by_api) = d.get_json("/reports?trigger=api&status=complete");
    assert_eq!(by_api["reports"].as_array().unwrap().len(), 4);
    let (_, future) = d.get_json("/reports?since=2999-01-01T00:00:00Z");
    assert_eq!(future["reports"].as_array().unwrap().len(), 0);
    let (_, past) = d.get_json("/reports?until=2999-01-01T00:00:00Z&since=2000-01-01T00:00:00Z");
    assert_eq!(past["reports"].as_array().unwrap().len(), 4);
    for (q, want) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("since=yesterday", "since"),
        ("status=lost", "status"),
        ("trigger=robot", "trigger"),
        ("cursor=abc", "cursor"),
        ("colour=red", "unknown field"),
    ] {
        let (code, v) = d.get_json(&format!("/reports?{q}"));
        assert_eq!(code, 400, "{q} → {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{q} → {v}");
    }

    // The page links its media through the API, and every link resolves.
    let id = &ids[0];
    let (code, ctype, page) = d.get_bytes(&format!("/reports/{id}.html"));
    assert_eq!(code, 200);
    assert_eq!(ctype, "text/html; charset=utf-8");
    let page = String::from_utf8(page).unwrap();
    let srcs: Vec<&str> = page
        .split("src=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(srcs, [format!("{id}/media/0")]);
    let (code, ctype, jpeg) = d.get_bytes(&format!("/reports/{}", srcs[0]));
    assert_eq!((code, ctype.as_str()), (200, "image/jpeg"));
    assert!(jpeg.starts_with(&[0xFF, 0xD8]));
    let (_, report) = d.get_json(&format!("/reports/{id}"));
    let media = &report["segments"][0]["media"];
    assert_eq!(jpeg.len() as u64, media["bytes"].as_u64().unwrap());
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&jpeg)),
        media["sha256"].as_str().unwrap()
    );
    for text in report_texts(&report) {
        assert!(page.contains(&text), "the page shows {text:?}");
    }

    // Ids and indices only: what is not one is refused, what does not exist is 404.
    let cases: &[(&str, u16)] = &[
        ("/reports/20991231T235959Z-0000", 404),
        ("/reports/20991231T235959Z-0000.html", 404),
        (&format!("/reports/{id}/media/1"), 404), // a text segment
        (&format!("/reports/{id}/media/99"), 404),
        (&format!("/reports/{id}/media/-1"), 400),
        (&format!("/reports/{id}/media/0.jpg"), 400),
        ("/reports/20261399T000000Z-0000", 404),
        ("/reports/..%2f..%2fetc%2fpasswd", 400),
        ("/reports/%2e%2e", 400),
        ("/reports/20261124T101530Z-3F2A", 400),
        ("/ask/not-an-id/events", 400),
        ("/ask/20991231T235959Z-0000/events", 404),
    ];
    for (path, want) in cases {
        let (code, body) = d.get(path);
        assert_eq!(code, *want, "{path}: {body}");
        assert!(
            serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(),
            "{path}: {body}"
        );
    }
}

fn report_texts(report: &Value) -> Vec<String> {
    report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "text")
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect()
}

/// A strict reading of the OpenMetrics text format: every family declared once with a known
/// type before its samples, sample names matching their family's type, label sets well
/// formed, values numbers, histograms cumulative and ending at `+Inf` = `_count`, `# EOF` last.
fn check_openmetrics(text: &str) -> BTreeMap<String, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut seen_eof = false;
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        assert!(!seen_eof, "content after # EOF: {line}");
        if line == "# EOF" {
            seen_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kw, name, val) = (
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap_or(""),
            );
            assert!(name_ok(name), "bad metric name in {line}");
            match kw {
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "stateset",
                            "unknown",
                            "summary",
                            "gaugehistogram"
                        ]
                        .contains(&val),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), val.to_string()).is_none(),
                        "family {name} declared twice"
                    );
                    current = Some((name.to_string(), val.to_string()));
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown descriptor {line}"),
            }
            continue;
        }
        let (family, ty) = current
            .clone()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value is not a number: {line}")),
        };
        let (name, labels) = match name_labels.find('{') {
            Some(i) => {
                assert!(name_labels.ends_with('}'), "{line}");
                (
                    &name_labels[..i],
                    &name_labels[i + 1..name_labels.len() - 1],
                )
            }
            None => (name_labels, ""),
        };
        let allowed: &[&str] = match ty.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &["", "_total", "_bucket", "_count", "_sum"],
        };
        let suffix = name
            .strip_prefix(family.as_str())
            .unwrap_or_else(|| panic!("sample {name} outside its family {family}"));
        assert!(
            allowed.contains(&suffix),
            "sample {name} does not fit a {ty} family {family}"
        );
        let mut label_map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let eq = rest
                .find("=\"")
                .unwrap_or_else(|| panic!("bad labels in {line}"));
            let key = &rest[..eq];
            assert!(name_ok(key), "bad label name {key:?} in {line}");
            let mut end = eq + 2;
            let b = rest.as_bytes();
            while b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            label_map.insert(key.to_string(), rest[eq + 2..end].to_string());
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        if ty == "counter" && suffix == "_total" {
            assert!(value >= 0.0, "a negative counter: {line}");
        }
        if suffix == "_bucket" {
            let le = label_map
                .get("le")
                .unwrap_or_else(|| panic!("bucket without le: {line}"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            buckets.entry(family.clone()).or_default().push((le, value));
        }
        if suffix == "_count" {
            counts.insert(family.clone(), value);
        }
    }
    assert!(seen_eof, "no # EOF line");
    for (family, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: buckets not cumulative"
        );
        let last = b.last().unwrap();
        assert!(last.0.is_infinite(), "{family}: no +Inf bucket");
        assert_eq!(
            Some(&last.1),
            counts.get(family),
            "{family}: +Inf bucket differs from _count"
        );
    }
    types
}

#[test]
fn metrics_are_strict_openmetrics_text_with_the_pipelines_figures() {
    let d = Daemon::start("");
    for _ in 0..2 {
        let id = d.ask(QUESTION, &["press-1"]);
        d.events(&id, None);
    }
    let (code, ctype, body) = d.get_bytes("/metrics");
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = String::from_utf8(body).unwrap();
    let types = check_openmetrics(&text);
    for (family, ty) in [
        ("gemba_camera_frames", "counter"),
        ("gemba_camera_frames_dropped", "counter"),
        ("gemba_queries", "counter"),
        ("gemba_generated_tokens", "counter"),
        ("gemba_decode_tokens_per_second", "gauge"),
        ("gemba_time_to_first_sentence_seconds", "histogram"),
        ("gemba_store_total_bytes", "gauge"),
        ("gemba_store_evicted_reports", "counter"),
        ("gemba_provider_fallbacks", "gauge"),
        ("gemba_api_sse_overflow_events", "counter"),
        ("gemba_api_asks_accepted", "counter"),
        ("gemba_request_queue_depth", "gauge"),
        ("gemba_model_loaded", "gauge"),
        ("gemba_process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}");
    }
    // An independent parser reads the same values.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
        match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    };
    assert!(value("gemba_camera_frames_total", Some(("camera", "press-1"))) >= 1.0);
    assert_eq!(value("gemba_api_asks_accepted_total", None), 2.0);
    assert_eq!(value("gemba_queries_total", None), 2.0);
    assert!(value("gemba_generated_tokens_total", None) >= 2.0 * 10.0);
    assert!(value("gemba_store_total_bytes", None) > 0.0);
    assert_eq!(value("gemba_model_loaded", None), 1.0);
    assert_eq!(
        value("gemba_provider_fallbacks", Some(("component", "decoder"))),
        0.0,
        "cpu was asked for and used"
    );
    assert_eq!(
        value("gemba_model_provider", Some(("component", "decoder"))),
        1.0
    );
    let ttfs_count = text
        .lines()
        .find_map(|l| l.strip_prefix("gemba_time_to_first_sentence_seconds_count "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert_eq!(ttfs_count, 2.0, "one first sentence per answer");
}

#[test]
fn health_flips_when_the_model_is_unloaded_and_back_after_a_reload() {
    let d = Daemon::start("");
    let (code, h) = d.get_json("/health");
    assert_eq!(code, 200);
    assert_eq!(
        (h["ready"].as_bool(), h["model"]["state"].as_str()),
        (Some(true), Some("loaded"))
    );
    assert_eq!(h["microphone"]["state"], "not configured");
    assert_eq!(h["store"]["state"], "ok");
    let status_file = || -> Value {
        serde_json::from_slice(&std::fs::read(d.dir.path().join("store/status.json")).unwrap())
            .unwrap()
    };
    assert_eq!(status_file()["api_addr"], d.addr.as_str());

    let (code, v) = d.post_empty("/model/unload");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["loaded"], false);
    let (code, h) = d.get_json("/health");
    assert_eq!(code, 503);
    assert_eq!(
        (h["ready"].as_bool(), h["model"]["state"].as_str()),
        (Some(false), Some("unloaded"))
    );
    let (code, v) = d.post_json("/ask", &json!({ "text": QUESTION }));
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no model loaded"));
    assert_eq!(
        status_file()["ready"],
        false,
        "status.json tells the installer too"
    );
    let (_, s) = d.get_json("/status");
    assert_eq!(s["model"]["loaded"], false);
    let (_, m) = d.get("/metrics");
    assert!(m.lines().any(|l| l == "gemba_model_loaded 0"));

    let (code, v) = d.post_empty("/model/reload");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["loaded"], true);
    assert!(v["bundle_hash"].as_str().unwrap().len() == 64);
    let (code, h) = d.get_json("/health");
    assert_eq!((code, h["ready"].as_bool()), (200, Some(true)));
    assert_eq!(status_file()["ready"], true);
    let id = d.ask(QUESTION, &[]);
    assert!(sentences(&d.events(&id, None))[0].contains("8.4 bar"));
    // No report was made for anything asked while unloaded.
    let (_, list) = d.get_json("/reports");
    assert_eq!(list["reports"].as_array().unwrap().len(), 1);
}

#[test]
fn status_names_the_bundle_providers_cameras_queue_and_store() {
    // A fleet layout: <models>/current → the bundle, and the update module's record beside it.
    let d = Daemon::start_with("", |dir| {
        let models = dir.join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::os::unix::fs::symlink(tiny_model(), models.join("current")).unwrap();
        let history: Vec<Value> = (0..30)
            .map(|i| json!({ "at": format!("2026-11-24T10:{i:02}:00Z"), "state": "Idle" }))
            .collect();
        std::fs::write(
            models.join("update-state.json"),
            json!({ "schema": 1, "state": "Healthy", "version": "2026.11.2", "attempt": null, "updated_at": "2026-11-24T10:30:00Z", "history": history }).to_string(),
        )
        .unwrap();
        models.join("current")
    });
    let id = d.ask(QUESTION, &["press-1"]);
    d.events(&id, None);
    let (code, s) = d.get_json("/status");
    assert_eq!(code, 200);
    assert_eq!(s["api_addr"], d.addr.as_str());
    assert_eq!(s["model"]["bundle_id"], "fp32");
    assert_eq!(s["model"]["bundle_hash"].as_str().unwrap().len(), 64);
    assert_eq!(s["model"]["providers"]["decoder"]["actual"], "cpu");
    assert_eq!(s["cameras"][0]["name"], "press-1");
    assert!(s["cameras"][0]["frames"].as_u64().unwrap() > 0);
    assert_eq!(s["queue"]["capacity"], 4);
    assert_eq!(s["queue"]["api_max_asks"], 4);
    assert!(s["store"]["usage"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["store"]["usage"]["reports"], 1);
    assert_eq!(s["counters"]["reports"], 1);
    assert!(s["last_errors"]["model"].is_null());
    assert_eq!(
        s["model"]["config_path"],
        d.dir.path().join("models/current").to_str().unwrap()
    );
    assert_eq!(s["update"]["state"], "Healthy");
    assert_eq!(
        s["update"]["history"].as_array().unwrap().len(),
        10,
        "only the last transitions"
    );
    assert_eq!(s["update"]["history"][9]["at"], "2026-11-24T10:29:00Z");
}
