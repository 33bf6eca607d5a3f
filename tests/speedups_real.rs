//! The decode speed-ups on the real model, SmolLM2-135M-Instruct int8 and int4 (bundles made by
//! scripts/models/make_smollm2.py through `scripts/real-model-check`; feature `real-model`).
//!
//! What `auto` decides there and that it keeps greedy output exact: model::exact's probe finds a
//! multi-token verify run's logits more than float rounding away from one-token runs' on both
//! bundles (ONNX Runtime computes one-row runs with other kernels, and the activations are
//! quantized to int8: up to half a logit apart), so speculation stays off and
//! `gemba doctor` says why; chunked prefills of two rows or more are exact, so prefix reuse is on,
//! and the greedy tokens with it equal those without over every conformance prompt (raw and chat)
//! and a follow-up question after each answer.

mod common;

use common::*;
use serde_json::json;

#[test]
fn auto_speedups_keep_greedy_tokens_on_the_real_model_with_follow_ups() {
    let prompts_file = root().join("tests/conformance/prompts.json");
    for precision in ["int8", "int4"] {
        let bundle = root().join("models/smollm2").join(precision);
        assert!(
            bundle.join("genai_config.json").exists(),
            "{} is missing: run scripts/real-model-check (it builds the bundles)",
            bundle.display()
        );
        // gemba doctor shows the decision and its reason.
        let mut doc = gemba();
        doc.args(["doctor", "--model"]).arg(&bundle);
        let text = String::from_utf8(run_ok(doc).stdout).unwrap();
        assert!(
            text.contains(
                "speculative decoding: off by default: a 4-token verify run's logits differ"
            ) && text.contains("more than float rounding"),
            "{precision}: {text}"
        );
        assert!(
            text.contains("prefix reuse: exact on this bundle (on by default)"),
            "{precision}: {text}"
        );

        let mut tok = gemba();
        tok.args(["debug", "tokenize"])
            .arg(&bundle)
            .arg(&prompts_file);
        let tokenized = json_of(&run_ok(tok));
        let mut first = Vec::new();
        for p in tokenized["prompts"].as_array().unwrap() {
            for key in ["chat_ids", "plain_ids"] {
                first.push(json!({"name": format!("{}:{key}", p["name"].as_str().unwrap()), "input_ids": p[key], "max_length": 160}));
            }
        }
        let answers = debug_greedy("greedy", &json!({"bundle": bundle, "cases": first}));
        let cases = with_follow_ups(&first, answers["cases"].as_array().unwrap());
        let run = |s: serde_json::Value| {
            debug_greedy(
                "greedy",
                &json!({"bundle": bundle, "cases": cases, "speculate": s, "prefix_cache": s}),
            )
        };
        let (on, off) = (run(json!("auto")), run(json!(false)));
        assert_eq!(on["speculation_on"], false, "{precision}");
        assert_eq!(on["prefix_cache_on"], true, "{precision}");
        let (a, b) = (
            on["cases"].as_array().unwrap(),
            off["cases"].as_array().unwrap(),
        );
        assert!(a.len() >= 40 && a.len() == b.len());
        let (mut reused, mut beyond) = (0, 0);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                x["output_ids"], y["output_ids"],
                "{precision}, {}: prefix reuse changed the greedy tokens",
                x["name"]
            );
            let r = x["reused_prefix_tokens"].as_u64().unwrap();
            reused += r;
            if i % 2 == 1 && r > first[i / 2]["input_ids"].as_array().unwrap().len() as u64 {
                beyond += 1;
            }
        }
        assert!(reused > 0, "{precision}: nothing was reused");
        assert!(
            beyond >= 10,
            "{precision}: only {beyond} follow-ups reused their first turn's answer"
        );
        eprintln!(
            "{precision}: {} cases, {reused} prompt tokens reused, {beyond} follow-ups past the first prompt",
            a.len()
        );
    }
}
