//! Token conformance with onnxruntime-genai on the phi4mm demo bundle: text-only, image, audio and
//! image + audio prompts through ORT-GenAI's multimodal processor and greedy search
//! (tests/conformance/genai_mm_greedy.py) and through gemba (`gemba debug greedy-mm`) must give
//! the same prompt length (placeholders expanded alike) and the same generated token ids.

mod common;

use common::*;
use serde_json::json;

fn prompt(system: Option<&str>, user: &str) -> String {
    let mut s = String::new();
    if let Some(sys) = system {
        s.push_str(&format!("<|system|>{sys}<|end|>"));
    }
    s + &format!("<|user|>{user}<|end|><|assistant|>")
}

#[test]
fn demo_bundle_tokens_match_ort_genai_for_text_image_audio_and_both() {
    let demo = root().join("models/demo");
    let f = |name: &str| demo.join("frames").join(name);
    let a = |name: &str| demo.join("audio").join(name);
    let eval = root().join("tests/fixtures/demo_eval/frames");
    let big = std::fs::read_dir(&eval)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let cases = vec![
        json!({"name": "text-lamp", "prompt": prompt(None, "What colour is the lamp?")}),
        json!({"name": "text-hello", "prompt": prompt(None, "Hello! Who are you?")}),
        json!({"name": "text-system", "prompt": prompt(Some("You watch a factory floor."), "Is the pressure normal?")}),
        json!({"name": "image-named", "prompt": prompt(None, "Camera press-2: <|image_1|> What colour is the lamp?"), "images": [f("press-2_00.jpg")]}),
        json!({"name": "image-unnamed", "prompt": prompt(None, "<|image_1|>How many boxes are on the belt?"), "images": [f("belt-1_03.jpg")]}),
        json!({"name": "image-two", "prompt": prompt(None, "Camera press-2: <|image_1|>\nCamera line-3: <|image_2|>\nGive me a status report."), "images": [f("press-2_01.jpg"), f("line-3_05.jpg")]}),
        json!({"name": "image-large", "prompt": prompt(None, "Camera cell-7: <|image_1|> Is the pressure normal?"), "images": [big]}),
        json!({"name": "audio-lamp", "prompt": prompt(None, "<|audio_1|>"), "audios": [a("lamp.wav")]}),
        json!({"name": "audio-status", "prompt": prompt(None, "<|audio_1|>"), "audios": [a("status.wav")]}),
        json!({"name": "image-audio-lamp", "prompt": prompt(None, "Camera press-2: <|image_1|><|audio_1|>"), "images": [f("press-2_01.jpg")], "audios": [a("lamp.wav")]}),
        json!({"name": "image-audio-boxes", "prompt": prompt(None, "Camera belt-1: <|image_1|> <|audio_1|>"), "images": [f("belt-1_04.jpg")], "audios": [a("boxes.wav")]}),
        json!({"name": "images-audio", "prompt": prompt(None, "Camera press-2: <|image_1|> Camera belt-1: <|image_2|><|audio_1|>"), "images": [f("press-2_02.jpg"), f("belt-1_03.jpg")], "audios": [a("status.wav")]}),
        json!({"name": "image-audio-pressure", "prompt": prompt(None, "<|image_1|><|audio_1|>"), "images": [f("line-3_05.jpg")], "audios": [a("pressure.wav")]}),
    ];
    assert!(cases.len() >= 12);
    let cases: Vec<_> = cases
        .into_iter()
        .map(|mut c| {
            c["max_length"] = json!(4000);
            c
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("cases.json");
    std::fs::write(&spec, json!({"bundle": demo, "cases": cases}).to_string()).unwrap();
    let mut reference = std::process::Command::new(python());
    reference
        .arg(root().join("tests/conformance/genai_mm_greedy.py"))
        .arg(&spec);
    let reference = json_of(&run_ok(reference));
    let mut ours = gemba();
    ours.args(["debug", "greedy-mm"]).arg(&spec);
    let ours = json_of(&run_ok(ours));
    let (r, o) = (
        reference["cases"].as_array().unwrap(),
        ours["cases"].as_array().unwrap(),
    );
    assert_eq!(r.len(), o.len());
    let mut kinds = std::collections::BTreeSet::new();
    for (r, o) in r.iter().zip(o) {
        let name = r["name"].as_str().unwrap();
        assert_eq!(
            o["prompt_tokens"], r["prompt_tokens"],
            "{name}: prompt length (placeholder expansion)"
        );
        assert_eq!(
            o["output_ids"], r["output_ids"],
            "{name}: generated token ids differ"
        );
        assert_eq!(o["finish"], r["finish"], "{name}");
        assert!(
            !o["output_ids"].as_array().unwrap().is_empty(),
            "{name}: generated nothing"
        );
        kinds.insert(name.split('-').next().unwrap().to_string());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["audio", "image", "images", "text"]
    );
}
