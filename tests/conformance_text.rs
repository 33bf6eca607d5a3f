//! Token conformance with onnxruntime-genai on the text test bundles.
//!
//! For each bundle (fp32, int4) and KV layout (shared buffer on and off), ORT-GenAI's greedy search
//! (pip `onnxruntime-genai`, run by tests/conformance/genai_greedy.py) and gemba (`gemba debug
//! greedy`, on ONNX Runtime 1.31.1 and on 1.23.2, the oldest gemba supports) must produce the
//! same token ids for every prompt of tests/conformance/prompts.json. Tokenization and chat
//! templates are compared first, and the greedy answers must be the memorised ones.

mod common;

use common::*;
use serde_json::{json, Value};

const MAX_LENGTH: usize = 200;

fn prompts() -> Value {
    let p = root().join("tests/conformance/prompts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn tokenization_and_chat_template_match_ort_genai() {
    let bundle = root().join("models/tiny-qwen2/fp32");
    let prompts_file = root().join("tests/conformance/prompts.json");
    let reference = genai(&[
        "tokenize",
        bundle.to_str().unwrap(),
        prompts_file.to_str().unwrap(),
    ]);
    let mut cmd = gemba();
    cmd.args(["debug", "tokenize"])
        .arg(&bundle)
        .arg(&prompts_file);
    let ours = json_of(&run_ok(cmd));
    let (r, o) = (
        reference["prompts"].as_array().unwrap(),
        ours["prompts"].as_array().unwrap(),
    );
    assert!(r.len() >= 12, "at least 12 prompts");
    assert_eq!(r.len(), o.len());
    for (r, o) in r.iter().zip(o) {
        for key in ["plain_ids", "chat_text", "chat_ids"] {
            assert_eq!(r[key], o[key], "prompt {}: {key} differs", r["name"]);
        }
    }
}

#[test]
fn greedy_tokens_match_ort_genai_on_both_runtimes_precisions_and_kv_layouts() {
    let prompts_file = root().join("tests/conformance/prompts.json");
    let fp32 = root().join("models/tiny-qwen2/fp32");
    let mut tok = gemba();
    tok.args(["debug", "tokenize"])
        .arg(&fp32)
        .arg(&prompts_file);
    let tokenized = json_of(&run_ok(tok));
    let cases: Vec<Value> = tokenized["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"name": p["name"], "input_ids": p["chat_ids"], "max_length": MAX_LENGTH}))
        .collect();
    let expected: Vec<(String, Option<String>)> = prompts()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["expected"].as_str().map(str::to_string),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for precision in ["fp32", "int4"] {
        for share in [true, false] {
            let file = dir.path().join(format!("cases-{precision}-{share}.json"));
            let bundle = root().join("models/tiny-qwen2").join(precision);
            std::fs::write(
                &file,
                json!({"bundle": bundle, "share_buffer": share, "cases": cases}).to_string(),
            )
            .unwrap();
            let reference = genai(&["greedy", file.to_str().unwrap()]);
            let ref_cases = reference["cases"].as_array().unwrap();
            for ort in ["1.31.1", "1.23.2"] {
                let mut cmd = gemba();
                cmd.arg("--onnxruntime")
                    .arg(ort_lib(ort))
                    .args(["debug", "greedy"])
                    .arg(&file);
                let ours = json_of(&run_ok(cmd));
                assert_eq!(ours["onnxruntime_version"], ort);
                assert_eq!(ours["share_buffer"], share);
                let our_cases = ours["cases"].as_array().unwrap();
                assert_eq!(our_cases.len(), ref_cases.len());
                for (o, r) in our_cases.iter().zip(ref_cases) {
                    assert_eq!(
                        o["output_ids"], r["output_ids"],
                        "{precision}, share_buffer={share}, ORT {ort}, prompt {}: token ids differ",
                        r["name"]
                    );
                    assert_eq!(o["finish"], r["finish"], "prompt {}", r["name"]);
                    assert!(
                        !o["output_ids"].as_array().unwrap().is_empty(),
                        "prompt {} generated nothing",
                        r["name"]
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 2 * 2 * 2 * expected.len());
}

#[test]
fn greedy_answers_are_the_memorised_facts() {
    // The bundle is a toy trained on a fact table; a working engine gives the memorised answer.
    let p = prompts();
    let mut right = 0;
    let mut total = 0;
    for prompt in p["prompts"].as_array().unwrap() {
        let Some(expected) = prompt["expected"].as_str() else {
            continue;
        };
        let mut cmd = gemba();
        cmd.args(["ask", "--model"])
            .arg(root().join("models/tiny-qwen2/fp32"));
        if let Some(s) = prompt["system"].as_str() {
            cmd.args(["--system", s]);
        }
        cmd.arg(prompt["user"].as_str().unwrap());
        let out = run_ok(cmd);
        let text = String::from_utf8(out.stdout).unwrap();
        // Sentences come one per line; compare the words.
        let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
        total += 1;
        if joined == expected.split_whitespace().collect::<Vec<_>>().join(" ") {
            right += 1;
        } else {
            eprintln!("{}: got {joined:?}, expected {expected:?}", prompt["name"]);
        }
    }
    assert!(total >= 12);
    assert_eq!(right, total, "every memorised answer");
}
