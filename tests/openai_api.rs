//! The OpenAI-compatible endpoints (`POST /v1/chat/completions`, `GET /v1/models`) driven by the
//! official `openai` Python client (PyPI, scripts/requirements-test.txt) against the real daemon
//! with the demo model: a text question, an image question (data URI), a spoken question
//! (`input_audio`), a streamed answer whose every chunk is well formed and whose text equals the
//! unstreamed answer, the raw SSE framing (`data: …` lines ending `data: [DONE]`), the bearer
//! token, and an OpenAI-shaped error. Each call is also a report (trigger `api`).

mod api_common;
mod common;

use std::process::Command;

use api_common::*;

#[test]
fn the_official_openai_client_gets_answers_and_well_formed_chunks() {
    let token = "7f3a9c0e5b2d4f6a8c1e3b5d7f9a0c2e";
    let d = Daemon::start_demo(&format!("token = \"{token}\""));
    let out = Command::new(common::python())
        .arg(root().join("tests/openai/client.py"))
        .arg(d.url("/v1"))
        .arg(token)
        .arg(root().join("models/demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("{seen}");
    // Every call made a report with trigger `api` (5 answered questions, the URL one refused).
    let (_, list) = d.get_json("/reports?trigger=api");
    let n = list["reports"].as_array().map_or(0, |r| r.len());
    assert_eq!(n, 5, "{list}");
}
