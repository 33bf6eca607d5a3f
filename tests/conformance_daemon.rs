//! Token conformance through the daemon's own paths, on the phi4mm demo bundle: for three demo
//! JPEG frames, the answer the daemon gives
//!
//! - through a **replay camera** looking at the frame (the file decoded by capture's replay
//!   source, published as the camera's latest `Frame`, taken by `POST /ask {"cameras": [..]}`
//!   through the request queue and the model worker), and
//! - to **`POST /ask` with the same JPEG** uploaded (decoded by the API),
//!
//! must be, token id by token id, the answer of `gemba ask --image` on the same file and of
//! ORT-GenAI (tests/conformance/genai_mm_greedy.py) for the same prompt. The daemon names a
//! frame in the prompt by its camera (`Camera press-2: <|image_1|>`; an upload is camera
//! `upload`), so each daemon path is compared with the CLI and the reference on its own prompt.
//!
//! The daemon's ids are read from the `token` events of `GET /ask/{id}/events` (each carries the
//! token's `id`, as `gemba ask --json` does): no debug switch is needed to see them.

mod api_common;
mod common;

use std::path::Path;

use api_common::Daemon;
use base64::Engine as _;
use common::{json_of, python, root, run_ok};
use serde_json::json;

const QUESTION: &str = "Give me a status report.";
const MAX_NEW_TOKENS: usize = 300;
/// (camera, frame file): three cameras, so the replay path is taken once per frame.
const FRAMES: [(&str, &str); 3] = [
    ("press-2", "press-2_00.jpg"),
    ("belt-1", "belt-1_03.jpg"),
    ("line-3", "line-3_05.jpg"),
];

/// The prompt the demo's chat template renders for one user message (as conformance_demo.rs).
fn rendered(user: &str) -> String {
    format!("<|user|>{user}<|end|><|assistant|>")
}

/// What the daemon puts in the user message for one frame of `camera` and the question.
fn content(camera: &str) -> String {
    format!("Camera {camera}: <|image_1|>\n{QUESTION}")
}

/// The demo bundle's end-of-sequence ids: gemba streams the eos token as the last token event;
/// ORT-GenAI's `output_ids` leave it out, so it is checked and taken off before comparing.
fn eos_ids() -> Vec<u64> {
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("models/demo/genai_config.json")).unwrap(),
    )
    .unwrap();
    match &cfg["model"]["eos_token_id"] {
        serde_json::Value::Array(a) => a.iter().map(|v| v.as_u64().unwrap()).collect(),
        v => vec![v.as_u64().unwrap()],
    }
}

/// `ids` of an answer that stopped on eos, without the eos token itself.
fn without_eos(mut ids: Vec<u64>, what: &str) -> Vec<u64> {
    let last = ids.pop();
    assert!(
        last.is_some_and(|t| eos_ids().contains(&t)),
        "{what}: stopped on eos but the last token is {last:?}"
    );
    ids
}

#[derive(Debug, PartialEq)]
struct Answer {
    ids: Vec<u64>,
    prompt_tokens: u64,
}

/// The generated ids of an ask through the daemon, from its event stream (every token event,
/// in order, numbered from 0, as many as `done` counts).
fn daemon_answer(d: &Daemon, report_id: &str, what: &str) -> Answer {
    let events = d.events(report_id, None);
    let tokens: Vec<_> = events.iter().filter(|e| e.event == "token").collect();
    let done = events
        .iter()
        .find(|e| e.event == "done")
        .unwrap_or_else(|| panic!("{what}: no done event: {events:?}"));
    for (k, t) in tokens.iter().enumerate() {
        assert_eq!(
            t.data["index"].as_u64(),
            Some(k as u64),
            "{what}: token events skip"
        );
    }
    assert_eq!(
        done.data["generated_tokens"].as_u64(),
        Some(tokens.len() as u64),
        "{what}: every generated token has its event"
    );
    assert_eq!(
        done.data["stop"]["reason"], "eos",
        "{what}: the answer ends on its own"
    );
    let ids = tokens
        .iter()
        .map(|t| t.data["id"].as_u64().unwrap())
        .collect();
    Answer {
        ids: without_eos(ids, what),
        prompt_tokens: done.data["prompt_tokens"].as_u64().unwrap(),
    }
}

/// `gemba ask --image FILE --json PROMPT` on the demo bundle.
fn cli_answer(demo: &Path, image: &Path, user: &str) -> Answer {
    let mut cmd = common::gemba();
    cmd.arg("ask")
        .arg("--model")
        .arg(demo)
        .arg("--image")
        .arg(image)
        .args(["--json", "--max-tokens", &MAX_NEW_TOKENS.to_string()])
        .arg(user)
        .env("GEMBA_LOG", "warn");
    let out = run_ok(cmd);
    let mut ids = Vec::new();
    let mut prompt_tokens = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["event"].as_str() {
            Some("token") => ids.push(v["id"].as_u64().unwrap()),
            Some("done") => {
                assert_eq!(v["stop"]["reason"], "eos", "gemba ask {user:?}: {v}");
                prompt_tokens = v["prompt_tokens"].as_u64();
            }
            _ => {}
        }
    }
    Answer {
        ids: without_eos(ids, &format!("gemba ask {user:?}")),
        prompt_tokens: prompt_tokens.expect("gemba ask --json ends with a done event"),
    }
}

#[test]
fn replay_cameras_and_post_ask_give_the_tokens_of_gemba_ask_and_ort_genai() {
    let demo = root().join("models/demo");
    let frame = |file: &str| demo.join("frames").join(file);

    // The daemon: one replay camera per frame (the source is that one file), not monitored,
    // so every answer comes from the test's questions.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = format!(
        r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{demo}"
max_new_tokens = {MAX_NEW_TOKENS}
deadline = "300s"
[providers]
order = ["cpu"]
[api]
"#,
        demo = demo.display()
    );
    for (camera, file) in FRAMES {
        cfg += &format!(
            "[[cameras]]\nname = \"{camera}\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 2.0\nmonitor = false\n",
            frame(file).display()
        );
    }
    let cfg_path = dir.path().join("gemba.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let d = Daemon::spawn(dir, &cfg_path, "", &[]);

    let mut replay = Vec::new();
    let mut upload = Vec::new();
    for (camera, file) in FRAMES {
        // Replay path: the camera's own decoded frame. One ask at a time: the queue is bounded.
        let id = d.ask(QUESTION, &[camera]);
        replay.push(daemon_answer(&d, &id, &format!("replay {camera}")));
        // Upload path: the same JPEG's bytes in the request.
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(frame(file)).unwrap());
        let (code, v) = d.post_json("/ask", &json!({ "text": QUESTION, "image": b64 }));
        assert_eq!(code, 202, "POST /ask with {file}: {v}");
        let id = v["report_id"].as_str().unwrap();
        upload.push(daemon_answer(&d, id, &format!("POST /ask {file}")));
    }
    drop(d);

    // gemba ask and ORT-GenAI on each path's prompt.
    let mut cases = Vec::new();
    let mut cli = Vec::new();
    for (camera, file) in FRAMES {
        for name in [camera, "upload"] {
            cases.push(json!({
                "name": format!("{name}/{file}"),
                "prompt": rendered(&content(name)),
                "images": [frame(file)],
                "max_length": 4000,
            }));
            cli.push(cli_answer(&demo, &frame(file), &content(name)));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("cases.json");
    std::fs::write(&spec, json!({"bundle": demo, "cases": cases}).to_string()).unwrap();
    let mut reference = std::process::Command::new(python());
    reference
        .arg(root().join("tests/conformance/genai_mm_greedy.py"))
        .arg(&spec);
    let reference = json_of(&run_ok(reference));
    let reference = reference["cases"].as_array().unwrap();
    assert_eq!(reference.len(), 2 * FRAMES.len());

    let mut compared = 0;
    for (k, (camera, file)) in FRAMES.iter().enumerate() {
        for (j, (path, daemon)) in [("replay camera", &replay[k]), ("POST /ask", &upload[k])]
            .into_iter()
            .enumerate()
        {
            let (r, g) = (&reference[2 * k + j], &cli[2 * k + j]);
            assert_eq!(r["finish"], "eos", "{}", r["name"]);
            let ort = Answer {
                ids: r["output_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
                prompt_tokens: r["prompt_tokens"].as_u64().unwrap(),
            };
            assert!(
                !ort.ids.is_empty(),
                "{camera} {file}: an empty answer proves little"
            );
            assert_eq!(g, &ort, "{path} {camera} {file}: gemba ask vs ORT-GenAI");
            assert_eq!(daemon, &ort, "{path} {camera} {file}: daemon vs ORT-GenAI");
            compared += 1;
        }
    }
    assert_eq!(compared, 6);
}

/// The demo model's answers are robust: its tokens above did not change when, as a trial, the
/// replay path's pixels were all moved by one level, or a quarter of them by 24 levels. So the
/// tokens alone cannot show that every path decodes alike; this shows it exactly. A replay
/// camera's frame and a V4L2 MJPEG frame of the same JPEG are byte for byte the pixels
/// `gemba ask --image` decodes (`POST /ask` calls that same function, `decode_image_within`).
#[test]
fn replay_and_mjpeg_frames_carry_exactly_the_pixels_gemba_ask_decodes() {
    use gemba::capture::pixel::mjpeg_to_rgb;
    use gemba::capture::replay::{ReplayCamera, ReplayConfig};
    use gemba::media::vision;

    let demo = root().join("models/demo/frames");
    let mut files: Vec<_> = FRAMES.iter().map(|(_, f)| demo.join(f)).collect();
    files.push(root().join("tests/fixtures/scene_420.jpg"));
    for path in files {
        let cli = vision::load_image(&path).unwrap();
        let mut camera =
            ReplayCamera::open(ReplayConfig::new("cam", path.display().to_string(), 1.0)).unwrap();
        let replay = camera.image(0).unwrap();
        assert_eq!(
            (replay.width as usize, replay.height as usize),
            (cli.width, cli.height)
        );
        assert!(
            *replay.rgb == cli.rgb,
            "{}: replay pixels differ",
            path.display()
        );
        let bytes = std::fs::read(&path).unwrap();
        let upload = vision::decode_image_within(&bytes, "upload", 4096 * 4096).unwrap();
        assert!(
            upload.rgb == cli.rgb,
            "{}: upload pixels differ",
            path.display()
        );
        let mjpeg = mjpeg_to_rgb(&bytes, replay.width, replay.height).unwrap();
        assert!(mjpeg == cli.rgb, "{}: MJPEG pixels differ", path.display());
    }
}
