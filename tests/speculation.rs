//! The decode speed-ups keep greedy output exact.
//!
//! Prompt-lookup speculative decoding: the same token ids with speculation on and off, on the
//! text bundles (both precisions, both KV layouts: the shared buffer rolled back by its length,
//! the moving cache sliced) and on the phi4mm demo bundle (text, image and audio prompts). Each
//! run must also have accepted drafts, so the comparison exercises the speculative path rather
//! than two plain runs. Drafts are verified whole (`fixed_drafts`: the most multi-row runs, the
//! same in every run); the demo is also run as the daemon runs it: `auto`, which model::exact's
//! probe turns on for these bundles (a verify run's logits are one-token runs' to float
//! rounding, 2e-6..7e-6 on ONNX Runtime 1.31 CPU; on SmolLM2 they differ by half a logit and
//! `auto` leaves it off, tests/speedups_real.rs), with the tuned draft lengths.
//!
//! KV prefix reuse: the same token ids with the prefix cache on and off, on the same bundles, for
//! prompts sharing the chat template's start, a system prompt or a camera's text, and follow-up
//! questions after an answer; the runs with the cache on must have reused cached tokens. With
//! `auto`, reuse is on where the probe finds chunked prefills exact (all bundles here).

mod common;

use common::*;
use serde_json::{json, Value};

/// Runs `gemba debug MODE` on `spec` with speculation on and off; returns both outputs' cases.
fn on_and_off(mode: &str, spec: Value) -> (Vec<Value>, Vec<Value>) {
    switched(mode, spec, "speculate")
}

/// Runs `gemba debug MODE` on `spec` with `key` true and false; returns both outputs' cases.
fn switched(mode: &str, spec: Value, key: &str) -> (Vec<Value>, Vec<Value>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for on in [true, false] {
        let mut s = spec.clone();
        s[key] = json!(on);
        let file = tmp.path().join(format!("cases-{on}.json"));
        std::fs::write(&file, s.to_string()).unwrap();
        let mut cmd = gemba();
        cmd.args(["debug", mode]).arg(&file);
        outs.push(json_of(&run_ok(cmd))["cases"].as_array().unwrap().clone());
    }
    let off = outs.pop().unwrap();
    (outs.pop().unwrap(), off)
}

fn assert_same(label: &str, on: &[Value], off: &[Value], min_cases: usize) {
    assert_same_by(label, on, off, min_cases, "accepted_drafts")
}

/// Same token ids on and off; `counter` (what the feature did) is 0 when off and > 0 in all
/// when on.
fn assert_same_by(label: &str, on: &[Value], off: &[Value], min_cases: usize, counter: &str) {
    assert!(
        on.len() >= min_cases,
        "{label}: {} cases, want at least {min_cases}",
        on.len()
    );
    assert_eq!(on.len(), off.len());
    let mut accepted = 0;
    let mut tokens = 0;
    for (a, b) in on.iter().zip(off) {
        let name = a["name"].as_str().unwrap();
        assert_eq!(
            a["output_ids"], b["output_ids"],
            "{label}, {name}: speculation changed the greedy tokens"
        );
        assert_eq!(a["finish"], b["finish"], "{label}, {name}");
        assert!(
            !a["output_ids"].as_array().unwrap().is_empty(),
            "{label}, {name}: generated nothing"
        );
        assert_eq!(
            b[counter], 0,
            "{label}, {name}: {counter} while switched off"
        );
        accepted += a[counter].as_u64().unwrap();
        tokens += a["output_ids"].as_array().unwrap().len() as u64;
    }
    assert!(
        accepted > 0,
        "{label}: {counter} is 0 over {tokens} tokens: the path under test did not run"
    );
    eprintln!(
        "{label}: {} cases, {tokens} tokens, {counter} {accepted}",
        on.len()
    );
}

/// Every prompt of tests/conformance/prompts.json, raw and through the chat template.
fn text_cases(bundle: &std::path::Path, max_length: usize) -> Vec<Value> {
    let mut tok = gemba();
    tok.args(["debug", "tokenize"])
        .arg(bundle)
        .arg(root().join("tests/conformance/prompts.json"));
    let tokenized = json_of(&run_ok(tok));
    let mut cases = Vec::new();
    for p in tokenized["prompts"].as_array().unwrap() {
        for key in ["chat_ids", "plain_ids"] {
            cases.push(json!({"name": format!("{}:{key}", p["name"].as_str().unwrap()), "input_ids": p[key], "max_length": max_length}));
        }
    }
    cases
}

#[test]
fn greedy_tokens_are_the_same_with_and_without_speculation_on_the_text_bundles() {
    for precision in ["fp32", "int4"] {
        let bundle = root().join("models/tiny-qwen2").join(precision);
        let cases = text_cases(&bundle, 200);
        for share in [true, false] {
            let (on, off) = on_and_off(
                "greedy",
                json!({"bundle": bundle, "share_buffer": share, "fixed_drafts": true, "cases": cases}),
            );
            assert_same(
                &format!("tiny-qwen2 {precision}, share_buffer={share}"),
                &on,
                &off,
                20,
            );
        }
    }
}

#[test]
fn greedy_tokens_are_the_same_with_and_without_speculation_on_the_demo() {
    let demo = root().join("models/demo");
    let f = |name: &str| demo.join("frames").join(name);
    let a = |name: &str| demo.join("audio").join(name);
    let prompt = |system: Option<&str>, user: &str| {
        let mut s = String::new();
        if let Some(sys) = system {
            s.push_str(&format!("<|system|>{sys}<|end|>"));
        }
        s + &format!("<|user|>{user}<|end|><|assistant|>")
    };
    let mut cases = Vec::new();
    // The monitoring prompts of the demo's cameras, on each of their frames.
    for (cam, frames, question) in [
        (
            "press-2",
            &["press-2_00.jpg", "press-2_01.jpg", "press-2_02.jpg"][..],
            "Give me a status report.",
        ),
        (
            "belt-1",
            &["belt-1_03.jpg", "belt-1_04.jpg"][..],
            "How many boxes are on the belt?",
        ),
        ("line-3", &["line-3_05.jpg"][..], "Give me a status report."),
    ] {
        for frame in frames {
            cases.push(json!({"name": format!("monitor-{frame}"), "prompt": prompt(None, &format!("Camera {cam}: <|image_1|>\n{question}")), "images": [f(frame)]}));
            cases.push(json!({"name": format!("lamp-{frame}"), "prompt": prompt(None, &format!("Camera {cam}: <|image_1|>\nWhat colour is the lamp?")), "images": [f(frame)]}));
        }
    }
    cases.push(json!({"name": "two-cameras", "prompt": prompt(None, "Camera press-2: <|image_1|>\nCamera line-3: <|image_2|>\nGive me a status report."), "images": [f("press-2_01.jpg"), f("line-3_05.jpg")]}));
    for clip in ["lamp.wav", "status.wav", "boxes.wav", "pressure.wav"] {
        cases.push(json!({"name": format!("audio-{clip}"), "prompt": prompt(None, "<|audio_1|>"), "audios": [a(clip)]}));
    }
    cases.push(json!({"name": "image-audio", "prompt": prompt(None, "Camera press-2: <|image_1|><|audio_1|>"), "images": [f("press-2_01.jpg")], "audios": [a("lamp.wav")]}));
    for (i, q) in [
        "What colour is the lamp?",
        "Hello! Who are you?",
        "Is the pressure normal?",
        "Give me a status report.",
    ]
    .iter()
    .enumerate()
    {
        cases.push(json!({"name": format!("text-{i}"), "prompt": prompt(Some("You watch a factory floor."), q)}));
    }
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|mut c| {
            c["max_length"] = json!(4000);
            c
        })
        .collect();
    // Every draft verified whole (the most multi-row runs), then as the daemon runs it: `auto`
    // (on: the probe finds float rounding only), as many drafted tokens as the tuner finds worth
    // verifying.
    let (on, off) = on_and_off(
        "greedy-mm",
        json!({"bundle": demo, "fixed_drafts": true, "cases": cases}),
    );
    assert_same("demo, fixed_drafts=true", &on, &off, 20);
    let auto = debug_greedy(
        "greedy-mm",
        &json!({"bundle": demo, "speculate": "auto", "cases": cases}),
    );
    assert_eq!(
        auto["speculation_on"], true,
        "demo: auto left speculation off"
    );
    assert_same("demo, auto", auto["cases"].as_array().unwrap(), &off, 20);
}

#[test]
fn greedy_tokens_are_the_same_with_and_without_prefix_reuse_on_the_text_bundles() {
    // The prompts share the chat template's start and several share a system prompt.
    for precision in ["fp32", "int4"] {
        let bundle = root().join("models/tiny-qwen2").join(precision);
        let cases = text_cases(&bundle, 200);
        for share in [true, false] {
            let (on, off) = switched(
                "greedy",
                json!({"bundle": bundle, "share_buffer": share, "cases": cases}),
                "prefix_cache",
            );
            assert_same_by(
                &format!("tiny-qwen2 {precision}, share_buffer={share}"),
                &on,
                &off,
                20,
                "reused_prefix_tokens",
            );
        }
    }
}

#[test]
fn greedy_tokens_are_the_same_with_and_without_prefix_reuse_on_the_demo() {
    let demo = root().join("models/demo");
    let f = |name: &str| demo.join("frames").join(name);
    let system =
        "<|system|>You watch a factory floor. Cite the camera you speak of as [cam:NAME].<|end|>";
    let mut cases = Vec::new();
    // A monitor's looks: the same system prompt and camera text before each frame.
    for frame in [
        "press-2_00.jpg",
        "press-2_01.jpg",
        "press-2_02.jpg",
        "belt-1_03.jpg",
        "belt-1_04.jpg",
        "line-3_05.jpg",
    ] {
        for q in ["Give me a status report.", "What colour is the lamp?"] {
            cases.push(json!({"name": format!("{frame}-{q}"), "prompt": format!("{system}<|user|>Camera {}: <|image_1|>\n{q}<|end|><|assistant|>", &frame[..6]), "images": [f(frame)], "max_length": 4000}));
        }
    }
    for q in [
        "Is the pressure normal?",
        "Hello! Who are you?",
        "Give me a status report.",
        "How many boxes are on the belt?",
    ] {
        for n in 0..2 {
            cases.push(json!({"name": format!("text-{q}-{n}"), "prompt": format!("{system}<|user|>{q}<|end|><|assistant|>"), "max_length": 4000}));
        }
    }
    let (on, off) = switched(
        "greedy-mm",
        json!({"bundle": demo, "cases": cases}),
        "prefix_cache",
    );
    assert_same_by("demo", &on, &off, 20, "reused_prefix_tokens");
}

/// `auto` on the text bundles: the probe's decision (both on: chunked prefills are exact, verify
/// runs differ by float rounding only), and the same greedy tokens as with both off — over
/// prompts and follow-up questions whose start (prompt and answer) the cache holds.
#[test]
fn auto_speedups_keep_greedy_tokens_on_the_text_bundles_with_follow_ups() {
    for precision in ["fp32", "int4"] {
        let bundle = root().join("models/tiny-qwen2").join(precision);
        let first = text_cases(&bundle, 120);
        let answers = debug_greedy("greedy", &json!({"bundle": bundle, "cases": first}));
        let cases = with_follow_ups(&first, answers["cases"].as_array().unwrap());
        for share in [true, false] {
            let spec = |auto: bool| {
                let s = if auto { json!("auto") } else { json!(false) };
                json!({"bundle": bundle, "share_buffer": share, "cases": cases, "speculate": s, "prefix_cache": s})
            };
            let on = debug_greedy("greedy", &spec(true));
            let off = debug_greedy("greedy", &spec(false));
            let label = format!("tiny-qwen2 {precision}, share_buffer={share}, auto");
            assert_eq!(
                on["prefix_cache_on"], true,
                "{label}: the probe found chunked prefills inexact"
            );
            assert_eq!(
                on["speculation_on"], true,
                "{label}: the probe found verify runs more than float rounding apart"
            );
            assert_eq!(off["prefix_cache_on"], false);
            assert_eq!(off["speculation_on"], false);
            let (a, b) = (
                on["cases"].as_array().unwrap(),
                off["cases"].as_array().unwrap(),
            );
            assert_same_by(&label, a, b, 40, "reused_prefix_tokens");
            assert_same_by(&label, a, b, 40, "accepted_drafts");
            // Follow-ups reuse their first turn's answer, not only its prompt.
            let beyond = (0..first.len())
                .filter(|&i| {
                    let prompt = first[i]["input_ids"].as_array().unwrap().len() as u64;
                    a[2 * i + 1]["reused_prefix_tokens"].as_u64().unwrap() > prompt
                })
                .count();
            assert!(
                beyond >= 10,
                "{label}: only {beyond} follow-ups reused more than their first turn's prompt"
            );
        }
    }
}
