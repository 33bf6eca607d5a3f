//! Several camera looks answered together (model::looks::ask_looks): the demo's frames,
//! pre-processed in parallel and encoded in one vision run, give each look the same greedy answer
//! as asking one look at a time; the warm-up at load runs a look and the exactness probe.

mod common;

use common::root;
use gemba::daemon::worker::AskInput;
use gemba::model::providers::ProviderPolicy;
use gemba::model::{runtime, CancelToken, Engine, Event};

fn look(camera: &str, file: &str, question: &str) -> AskInput {
    AskInput {
        text: question.into(),
        frames: vec![common::frame_from_file(
            camera,
            &root().join("models/demo/frames").join(file),
        )],
        audio: Vec::new(),
    }
}

#[test]
fn looks_encoded_together_answer_as_looks_one_at_a_time() {
    let rt = runtime::init(None).expect("ONNX Runtime (run scripts/setup test)");
    let mut engine =
        Engine::load(rt, &root().join("models/demo"), &ProviderPolicy::default()).unwrap();
    // The demo's vision graph takes `num_images` frames in one run.
    assert!(gemba::model::looks::batches_vision(&engine));
    gemba::model::looks::warm_up(&mut engine).unwrap();
    assert!(engine.exactness().prefix_reuse.is_ok());
    assert!(
        engine.decoder.prefix.is_empty(),
        "the warm-up left a cached prefix"
    );

    // Frames of different sizes (640×480 and 800×450: different crop counts, padded in the batch).
    let looks = vec![
        look("press-2", "press-2_00.jpg", "Give me a status report."),
        look("belt-1", "belt-1_03.jpg", "How many boxes are on the belt?"),
        look("line-3", "line-3_05.jpg", "What colour is the lamp?"),
        look("press-2", "press-2_02.jpg", "What colour is the lamp?"),
        AskInput {
            text: "Hello! Who are you?".into(),
            ..Default::default()
        },
    ];
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    params.max_new_tokens = Some(40);
    let system = Some("You watch a factory floor.");
    let mut one_by_one = Vec::new();
    for l in &looks {
        let mut ids = Vec::new();
        engine
            .ask(l, system, &params, &CancelToken::new(), &mut |ev| {
                if let Event::Token(t) = ev {
                    ids.push(t.id)
                }
            })
            .unwrap();
        one_by_one.push(ids);
    }
    let mut together = vec![Vec::new(); looks.len()];
    let prompts: Vec<gemba::model::engine::Prompt<'_>> = looks.iter().map(Into::into).collect();
    let results = gemba::model::looks::ask_looks(
        &mut engine,
        &prompts,
        system,
        &params,
        &CancelToken::new(),
        &mut |i, ev| {
            if let Event::Token(t) = ev {
                together[i].push(t.id)
            }
        },
    );
    for (i, r) in results.into_iter().enumerate() {
        let done = r.unwrap();
        assert_eq!(done.generated_tokens, together[i].len());
        assert!(!together[i].is_empty(), "look {i} generated nothing");
        assert_eq!(together[i], one_by_one[i], "look {i} answered differently");
    }
}
