//! `response_format` through the daemon (tiny text model): `POST /ask` with a JSON schema, a
//! choice list and an expression — the answer in the event stream matches, and the Done event
//! carries the parsed JSON; `POST /v1/chat/completions` with OpenAI's `json_schema` and
//! `json_object`; an invalid schema, an unsatisfiable one, a bad expression → 400 naming it.

mod api_common;
mod common;

use api_common::*;
use serde_json::{json, Value};

fn done_of(d: &Daemon, body: Value) -> Value {
    let (code, v) = d.post_json("/ask", &body);
    assert_eq!(code, 202, "{body} → {v}");
    let id = v["report_id"].as_str().unwrap();
    let events = d.events(id, None);
    events
        .iter()
        .find(|e| e.event == "done")
        .unwrap_or_else(|| panic!("no done event: {events:?}"))
        .data
        .clone()
}

#[test]
fn api_answers_follow_response_format_and_bad_formats_are_400() {
    let d = Daemon::start("");
    let q = "What colour is the status lamp?";

    let schema = json!({"type": "object",
        "properties": {"lamp": {"enum": ["green", "amber", "red"]}, "ok": {"type": "boolean"}},
        "required": ["lamp", "ok"], "additionalProperties": false,
        // json.dumps' form: left the whitespace, the tiny model writes spaces to max_tokens.
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}});
    let done = done_of(
        &d,
        json!({"text": q, "response_format": {"type": "json_schema", "schema": schema}}),
    );
    assert_eq!(done["stop"]["reason"], "eos", "{done}");
    let v: Value = serde_json::from_str(done["text"].as_str().unwrap()).unwrap();
    assert_eq!(done["structured"], v);
    assert!(
        ["green", "amber", "red"].contains(&v["lamp"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["ok"].is_boolean(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");

    let done = done_of(
        &d,
        json!({"text": "Is anyone inside the fence?",
               "response_format": {"type": "choice", "choices": ["yes", "no"]}}),
    );
    let text = done["text"].as_str().unwrap();
    assert!(text == "yes" || text == "no", "{text:?}");
    assert!(done.get("structured").is_none());

    let done = done_of(
        &d,
        json!({"text": "How many boxes?",
               "response_format": {"type": "regex", "pattern": "[0-9] (box|boxes)"}}),
    );
    let text = done["text"].as_str().unwrap();
    assert!(
        text.len() >= 5 && text.as_bytes()[0].is_ascii_digit() && text[1..].starts_with(" box"),
        "{text:?}"
    );

    for (rf, want) in [
        (
            json!({"type": "json_schema", "schema": {"type": "nope"}}),
            "invalid JSON schema",
        ),
        (
            json!({"type": "json_schema", "schema": {"type": "integer", "minimum": 3, "maximum": 1}}),
            "can never be satisfied",
        ),
        (
            json!({"type": "regex", "pattern": "([0-9]"}),
            "invalid regular expression",
        ),
        (
            json!({"type": "choice", "choices": []}),
            "choice list is empty",
        ),
    ] {
        let (code, v) = d.post_json("/ask", &json!({"text": q, "response_format": rf}));
        assert_eq!(code, 400, "{rf} → {v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("response_format") && e.contains(want),
            "{rf} → {e}"
        );
    }

    // OpenAI's shapes.
    let chat = |rf: Value| {
        d.post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": q}], "response_format": rf}),
        )
    };
    let (code, v) = chat(json!({"type": "json_schema",
        "json_schema": {"name": "lamp", "strict": true, "schema": schema}}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(["green", "amber", "red"].contains(&content["lamp"].as_str().unwrap()));
    let (code, v) = chat(json!({"type": "json_object"}));
    assert_eq!(code, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(content).unwrap();
        assert!(parsed.is_object(), "{content}");
    } else {
        // Cut at max_tokens: still the start of an object.
        assert!(content.trim_start().starts_with('{'), "{content}");
    }
    let (code, v) =
        chat(json!({"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON schema"));
    let (code, v) = chat(json!({"type": "xml"}));
    assert_eq!(code, 400, "{v}");
}
