//! A bundle's decoder `session_options` reach ONNX Runtime: `enable_profiling` (a file prefix, as
//! ORT-GenAI reads it) makes the session write a profile that records gemba's decoder runs.

mod common;

use common::{copy_bundle, gemba, root, run_ok};

#[test]
fn enable_profiling_writes_a_profile_of_the_decoder_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    copy_bundle(&root().join("models/tiny-qwen2/fp32"), &bundle);
    let cfg_path = bundle.join("genai_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let prefix = tmp.path().join("prof");
    cfg["model"]["decoder"]["session_options"]["enable_profiling"] =
        prefix.to_str().unwrap().into();
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    let mut cmd = gemba();
    cmd.args(["ask", "--model"]).arg(&bundle).args([
        "--max-tokens",
        "8",
        "What is the pressure on press 1?",
    ]);
    run_ok(cmd);

    let profiles: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("prof_")
        })
        .collect();
    assert_eq!(
        profiles.len(),
        1,
        "one profile file next to the prefix, found {profiles:?}"
    );
    let events: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profiles[0]).unwrap()).unwrap();
    let runs = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "model_run")
        .count();
    // One prefill run, then one run per generated token after the first.
    assert!(
        runs >= 2,
        "the profile records the decoder runs: {runs} model_run events"
    );
}
