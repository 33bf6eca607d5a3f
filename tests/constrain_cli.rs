//! `gemba ask --json-schema FILE | --choice a,b,c | --regex R` on the tiny Qwen2 bundle and the
//! demo bundle: the answer parses and validates (greedy and sampled), and bad formats are
//! errors that name the file or the expression.

mod common;

use common::*;
use serde_json::{json, Value};

fn ask(bundle: &str, args: &[&str], question: &str) -> std::process::Output {
    let mut cmd = gemba();
    cmd.args(["ask", "--model"])
        .arg(root().join(bundle))
        .args(["--max-tokens", "200"])
        .args(args)
        .arg(question);
    cmd.output().expect("spawn")
}

/// The Done event of `gemba ask --json`.
fn done(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "done")
        .expect("a done event")
}

fn schema_file(dir: &std::path::Path, name: &str, schema: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, schema.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn answers_follow_the_schema_the_choices_and_the_expression() {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "lamp": {"enum": ["green", "amber", "red"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 20},
            "people": {"type": "boolean"}
        },
        "required": ["lamp", "count", "people"],
        "additionalProperties": false,
        // One fixed form (json.dumps'): the tiny models, left the whitespace, write spaces
        // until max_tokens (ORT-GenAI's default lets them).
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}
    });
    let file = schema_file(dir.path(), "lamp.json", &schema);
    for bundle in ["models/tiny-qwen2/fp32", "models/demo"] {
        for extra in [
            &[][..],
            &["--sample", "--seed", "7"][..],
            &["--sample", "--seed", "8"],
        ] {
            let mut args = vec!["--json", "--json-schema", file.as_str()];
            args.extend_from_slice(extra);
            let d = done(&ask(bundle, &args, "What colour is the status lamp?"));
            assert_eq!(d["stop"]["reason"], "eos", "{bundle} {extra:?}: {d}");
            let text = d["text"].as_str().unwrap();
            let v: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{bundle} {extra:?}: {text:?} is not JSON: {e}"));
            assert_eq!(d["structured"], v, "Done.structured is the parsed answer");
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 3, "{text}");
            assert!(
                text.starts_with("{\"lamp\": \""),
                "the compact form: {text}"
            );
            assert!(["green", "amber", "red"].contains(&o["lamp"].as_str().unwrap()));
            assert!((0..=20).contains(&o["count"].as_i64().unwrap()), "{text}");
            assert!(o["people"].is_boolean(), "{text}");
        }
        // Plain output: the answer whole on stdout.
        let out = ask(
            bundle,
            &["--choice", "yes,no,unsure"],
            "Is anyone inside the fence?",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            ["yes\n", "no\n", "unsure\n"].contains(&text.as_str()),
            "{bundle}: {text:?}"
        );
        let d = done(&ask(
            bundle,
            &["--json", "--regex", "[0-9]{1,2} (box|boxes)"],
            "How many boxes are on the belt?",
        ));
        let text = d["text"].as_str().unwrap();
        let (n, word) = text.split_once(' ').unwrap();
        assert!(
            (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
        assert!(word == "box" || word == "boxes", "{text:?}");
        assert!(
            d.get("structured").is_none(),
            "only JSON answers are structured"
        );
    }
}

#[test]
fn bad_formats_are_errors_naming_the_file_or_the_expression() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = "models/tiny-qwen2/fp32";
    let fail = |args: &[&str]| {
        let out = ask(bundle, args, "Anything?");
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let bad = schema_file(dir.path(), "bad.json", &json!({"type": "nope"}));
    let e = fail(&["--json-schema", &bad]);
    assert!(e.contains(&bad) && e.contains("invalid JSON schema"), "{e}");
    let never = schema_file(
        dir.path(),
        "never.json",
        &json!({"type": "integer", "minimum": 10, "maximum": 1}),
    );
    let e = fail(&["--json-schema", &never]);
    assert!(
        e.contains(&never) && e.contains("can never be satisfied"),
        "{e}"
    );
    let not_json = dir.path().join("broken.json");
    std::fs::write(&not_json, "{\"type\": ").unwrap();
    let e = fail(&["--json-schema", not_json.to_str().unwrap()]);
    assert!(e.contains("broken.json") && e.contains("not JSON"), "{e}");
    let missing = dir.path().join("missing.json");
    let e = fail(&["--json-schema", missing.to_str().unwrap()]);
    assert!(e.contains("missing.json"), "{e}");
    let e = fail(&["--regex", "([0-9]+"]);
    assert!(
        e.contains("([0-9]+") && e.contains("regular expression"),
        "{e}"
    );
    let e = fail(&["--choice", "a", "--regex", "b"]);
    assert!(e.contains("cannot be used with"), "{e}");
}
