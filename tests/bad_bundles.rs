//! Malformed bundles: each is refused before anything runs, with one clear line that names the
//! file and what is wrong — and `gemba ask` exits non-zero without a panic or a backtrace.
//!
//! Each case starts from a copy of the good tiny bundle and breaks one thing: a file, a config
//! key, or the graph itself (graphs from tests/fixtures/bad-graphs, made by
//! scripts/models/make_bad_graphs.py).

mod common;

use std::path::Path;

use common::*;

type Break = fn(&Path);

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("genai_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn use_graph(dir: &Path, name: &str) {
    std::fs::copy(
        root().join("tests/fixtures/bad-graphs").join(name),
        dir.join("model.onnx"),
    )
    .unwrap();
    std::fs::remove_file(dir.join("model.onnx.data")).unwrap();
}

/// (case, how to break the bundle, fragments the one error line must contain)
fn cases() -> Vec<(&'static str, Break, &'static [&'static str])> {
    vec![
        (
            "missing config",
            |d| std::fs::remove_file(d.join("genai_config.json")).unwrap(),
            &["genai_config.json", "missing"],
        ),
        (
            "config not JSON",
            |d| {
                std::fs::write(
                    d.join("genai_config.json"),
                    "{\"model\": {\n  \"type\": \"qwen2\",,\n",
                )
                .unwrap()
            },
            &["genai_config.json", "line 2"],
        ),
        (
            "unknown key",
            |d| edit_config(d, |v| v["model"]["decoder"]["flash"] = true.into()),
            &["genai_config.json", "model.decoder.flash", "unknown key"],
        ),
        (
            "missing ONNX file",
            |d| std::fs::remove_file(d.join("model.onnx")).unwrap(),
            &["model.onnx", "model.decoder.filename", "does not exist"],
        ),
        (
            "truncated ONNX file",
            |d| {
                let p = d.join("model.onnx");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
            },
            &["decoder", "model.onnx", "cannot load"],
        ),
        (
            "missing external weights",
            |d| std::fs::remove_file(d.join("model.onnx.data")).unwrap(),
            &["decoder", "model.onnx", "cannot load"],
        ),
        (
            "missing tokenizer",
            |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
            &["tokenizer.json", "missing"],
        ),
        (
            "empty tokenizer",
            |d| {
                std::fs::write(
                    d.join("tokenizer.json"),
                    r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
                       "pre_tokenizer":null,"post_processor":null,"decoder":null,
                       "model":{"type":"WordLevel","vocab":{},"unk_token":"[UNK]"}}"#,
                )
                .unwrap()
            },
            &["tokenizer.json", "empty vocabulary"],
        ),
        (
            "broken chat template",
            |d| {
                let p = d.join("tokenizer_config.json");
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["chat_template"] = "{% for m in messages %}{{ m.content }".into();
                std::fs::write(&p, v.to_string()).unwrap();
            },
            &["tokenizer_config.json", "chat_template"],
        ),
        (
            "wrong input name",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["inputs"]["input_ids"] = "ids".into()
                })
            },
            &["model.onnx", "\"ids\"", "model.decoder.inputs.input_ids"],
        ),
        (
            "more layers than the graph",
            |d| edit_config(d, |v| v["model"]["decoder"]["num_hidden_layers"] = 5.into()),
            &["model.onnx", "past_key_values.4.key", "num_hidden_layers=5"],
        ),
        (
            "KV heads disagree",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["num_key_value_heads"] = 3.into()
                })
            },
            &["model.onnx", "2 KV heads", "num_key_value_heads says 3"],
        ),
        (
            "wrong logits name",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["outputs"]["logits"] = "scores".into()
                })
            },
            &["model.onnx", "\"scores\"", "model.decoder.outputs.logits"],
        ),
        (
            "KV name without %d",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["inputs"]["past_key_names"] = "past_key".into()
                })
            },
            &[
                "genai_config.json",
                "model.decoder.inputs.past_key_names",
                "%d",
            ],
        ),
        (
            "no context length",
            |d| edit_config(d, |v| v["model"]["context_length"] = 0.into()),
            &["genai_config.json", "model.context_length"],
        ),
        // Impossible sizes and ids (issue 10, finding 8): refused at load, by key.
        (
            "zero attention heads",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["num_attention_heads"] = 0.into()
                })
            },
            &[
                "genai_config.json",
                "model.decoder.num_attention_heads",
                "greater than 0",
            ],
        ),
        (
            "zero vocabulary",
            |d| edit_config(d, |v| v["model"]["vocab_size"] = 0.into()),
            &["genai_config.json", "model.vocab_size", "greater than 0"],
        ),
        (
            "eos id -1",
            |d| {
                edit_config(d, |v| {
                    v["model"]["eos_token_id"] = serde_json::json!([599, -1])
                })
            },
            &[
                "genai_config.json",
                "model.eos_token_id",
                "-1 is not a token id",
            ],
        ),
        (
            "eos id outside the vocabulary",
            |d| edit_config(d, |v| v["model"]["eos_token_id"] = 640.into()),
            &[
                "genai_config.json",
                "model.eos_token_id",
                "outside the vocabulary",
            ],
        ),
        (
            "zero head size",
            |d| edit_config(d, |v| v["model"]["decoder"]["head_size"] = 0.into()),
            &[
                "genai_config.json",
                "model.decoder.head_size",
                "greater than 0",
            ],
        ),
        (
            "zero layers",
            |d| edit_config(d, |v| v["model"]["decoder"]["num_hidden_layers"] = 0.into()),
            &[
                "genai_config.json",
                "model.decoder.num_hidden_layers",
                "greater than 0",
            ],
        ),
        (
            "more KV heads than heads",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["num_key_value_heads"] = 8.into()
                })
            },
            &[
                "genai_config.json",
                "model.decoder.num_key_value_heads",
                "more than num_attention_heads",
            ],
        ),
        (
            "thousands of threads",
            |d| {
                edit_config(d, |v| {
                    v["model"]["decoder"]["session_options"]["intra_op_num_threads"] =
                        100_000.into()
                })
            },
            &[
                "decoder",
                "intra_op_num_threads",
                "100000 threads is more than",
            ],
        ),
        (
            "temperature not finite",
            |d| edit_config(d, |v| v["search"]["temperature"] = (-1.0).into()),
            &["genai_config.json", "search.temperature"],
        ),
        (
            "unsupported model type",
            |d| edit_config(d, |v| v["model"]["type"] = "whisper".into()),
            &["genai_config.json", "model.type", "whisper"],
        ),
        (
            "input of the wrong dtype",
            |d| use_graph(d, "wrong_dtype.onnx"),
            &["model.onnx", "input_ids", "Float32", "int64"],
        ),
        (
            "KV of the wrong rank",
            |d| use_graph(d, "wrong_rank.onnx"),
            &["model.onnx", "past_key_values.0.key", "rank 3"],
        ),
        (
            "missing present output",
            |d| use_graph(d, "missing_present.onnx"),
            &["model.onnx", "present.3.value", "not in the graph"],
        ),
        (
            "graph input nothing feeds",
            |d| use_graph(d, "extra_input.onnx"),
            &["model.onnx", "token_type_ids", "nothing would feed it"],
        ),
    ]
}

#[test]
fn malformed_bundles_fail_with_one_precise_line() {
    let cases = cases();
    assert!(cases.len() >= 10);
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, break_it, want)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        copy_bundle(&root().join("models/tiny-qwen2/fp32"), &dir);
        break_it(&dir);
        let out = gemba()
            .args(["ask", "--model"])
            .arg(&dir)
            .arg("What is the pressure on press 1?")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !out.status.success(),
            "{name}: exit status should be non-zero"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: an error exit, not a signal or a panic"
        );
        assert_eq!(
            lines.len(),
            1,
            "{name}: expected exactly one line on stderr, got:\n{stderr}"
        );
        let line = lines[0];
        assert!(line.starts_with("gemba: error: "), "{name}: {line}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("internal error"),
            "{name}: {stderr}"
        );
        for w in want {
            assert!(line.contains(w), "{name}: expected {w:?} in\n{line}");
        }
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
}

#[test]
fn missing_or_old_onnxruntime_is_one_clear_line() {
    let bundle = root().join("models/tiny-qwen2/fp32");
    let out = gemba()
        .args([
            "--onnxruntime",
            "/nonexistent/libonnxruntime.so",
            "ask",
            "--model",
        ])
        .arg(&bundle)
        .arg("hi")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && err.contains("scripts/setup"),
        "{err}"
    );

    // A real ONNX Runtime that is older than the floor.
    let out = gemba()
        .arg("--onnxruntime")
        .arg(ort_lib("1.22.1"))
        .args(["ask", "--model"])
        .arg(&bundle)
        .arg("hi")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("version 1.22.1, older than the 1.23 gemba needs"),
        "{err}"
    );

    // A file that is not ONNX Runtime at all.
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let out = gemba()
        .arg("--onnxruntime")
        .arg(&fake)
        .args(["ask", "--model"])
        .arg(&bundle)
        .arg("hi")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("could not load ONNX Runtime") && err.contains(fake.to_str().unwrap()),
        "{err}"
    );
}
