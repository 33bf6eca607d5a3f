//! Constrained decoding against ORT-GenAI's guidance (pip onnxruntime-genai 0.18 has it:
//! `GeneratorParams.set_guidance`, llguidance inside) on the real-vocabulary SmolLM2-135M-Instruct
//! bundles (49152 tokens; int8 and int4): for each schema, choice list and expression, and each
//! question, `gemba ask` generates exactly ORT-GenAI's greedy token ids. Feature `real-model`
//! (the bundles come from scripts/real-model-check, as for tests/conformance_real.rs).

mod common;

use common::*;
use serde_json::{json, Value};

/// (name, question, gemba's flag and value, ORT-GenAI's guidance type and data).
fn cases(dir: &std::path::Path) -> Vec<(String, String, Vec<String>, String, String)> {
    let schemas = [
        (
            "lamp",
            json!({"type": "object", "properties": {
                "lamp": {"enum": ["green", "amber", "red"]},
                "count": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["lamp", "count"], "additionalProperties": false}),
            &[
                "What colour is the status lamp?",
                "Describe the machine's state.",
            ][..],
        ),
        (
            "person",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"]}),
            &["Who is the operator on shift?", "Tell me about yourself."][..],
        ),
        (
            "list",
            json!({"type": "object", "properties": {
                "items": {"type": "array", "items": {"type": "string", "maxLength": 12},
                          "minItems": 2, "maxItems": 4}},
                "required": ["items"], "additionalProperties": false}),
            &["List the tools on the bench."][..],
        ),
        (
            "nested",
            json!({"type": "object", "properties": {
                "machine": {"type": "object", "properties": {
                    "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                    "running": {"type": "boolean"},
                    "temperature": {"type": "number", "minimum": -20, "maximum": 150}},
                    "required": ["id", "running", "temperature"], "additionalProperties": false}},
                "required": ["machine"], "additionalProperties": false}),
            &["Report the press status.", "Is the oven running?"][..],
        ),
        (
            "severity",
            json!({"enum": ["info", "warning", "critical"]}),
            &["How serious is a small oil leak?"][..],
        ),
    ];
    let mut out = Vec::new();
    for (name, schema, questions) in schemas {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, schema.to_string()).unwrap();
        for (i, q) in questions.iter().enumerate() {
            out.push((
                format!("{name}-{i}"),
                q.to_string(),
                vec!["--json-schema".into(), file.to_str().unwrap().into()],
                "json_schema".into(),
                schema.to_string(),
            ));
        }
    }
    for (name, q, choices) in [
        ("choice-yn", "Is the sky blue?", vec!["yes", "no"]),
        (
            "choice-lamp",
            "What colour is the lamp?",
            vec!["green", "amber", "red"],
        ),
    ] {
        let lark = choices
            .iter()
            .map(|c| Value::String(c.to_string()).to_string())
            .collect::<Vec<_>>()
            .join(" | ");
        out.push((
            name.into(),
            q.into(),
            vec!["--choice".into(), choices.join(",")],
            "lark_grammar".into(),
            format!("start: {lark}"),
        ));
    }
    for (name, q, rx) in [
        (
            "regex-count",
            "How many boxes are on the belt?",
            "[0-9]{1,3} (box|boxes)",
        ),
        (
            "regex-date",
            "What is the date today?",
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
        ),
        ("regex-words", "Name a colour.", "[a-z]+( [a-z]+)?"),
    ] {
        out.push((
            name.into(),
            q.into(),
            vec!["--regex".into(), rx.into()],
            "regex".into(),
            rx.into(),
        ));
    }
    out
}

#[test]
fn constrained_tokens_match_ort_genai_guidance_on_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases(dir.path());
    assert!(cases.len() >= 10);
    let max_new = 60;
    let mut compared = 0;
    for precision in ["int8", "int4"] {
        let bundle = root().join("models/smollm2").join(precision);
        assert!(
            bundle.join("genai_config.json").exists(),
            "{} is missing: run scripts/real-model-check",
            bundle.display()
        );
        let spec = json!({
            "bundle": bundle,
            "cases": cases.iter().map(|(name, q, _, ty, data)| json!({
                "name": name, "question": q, "max_new_tokens": max_new,
                "guidance_type": ty, "guidance_data": data,
            })).collect::<Vec<_>>(),
        });
        let spec_file = dir.path().join(format!("cases-{precision}.json"));
        std::fs::write(&spec_file, spec.to_string()).unwrap();
        let mut cmd = std::process::Command::new(python());
        cmd.arg(root().join("tests/conformance/genai_guidance.py"))
            .arg(&spec_file);
        let reference = json_of(&run_ok(cmd));
        let eos: Vec<u64> = {
            let cfg: Value = serde_json::from_str(
                &std::fs::read_to_string(bundle.join("genai_config.json")).unwrap(),
            )
            .unwrap();
            match &cfg["model"]["eos_token_id"] {
                Value::Array(a) => a.iter().map(|v| v.as_u64().unwrap()).collect(),
                v => vec![v.as_u64().unwrap()],
            }
        };
        for ((name, q, flag, _, _), r) in cases.iter().zip(reference["cases"].as_array().unwrap()) {
            let mut cmd = gemba();
            cmd.args(["ask", "--json", "--model"])
                .arg(&bundle)
                .args(["--max-tokens", &max_new.to_string()])
                .args(flag)
                .arg(q);
            let out = run_ok(cmd);
            let mut ids: Vec<u64> = Vec::new();
            let mut text = String::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["event"] == "token" {
                    ids.push(v["id"].as_u64().unwrap());
                }
                if v["event"] == "done" {
                    text = v["text"].as_str().unwrap().to_string();
                }
            }
            while ids.last().is_some_and(|i| eos.contains(i)) {
                ids.pop();
            }
            let want: Vec<u64> = r["output_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                ids, want,
                "{precision} {name}: gemba {text:?}, ORT-GenAI {:?}",
                r["text"]
            );
            assert!(!ids.is_empty(), "{precision} {name}: empty answer");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * cases.len());
}
