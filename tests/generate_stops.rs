//! How a generation ends, through the real engine on the tiny bundle: eos, max_length,
//! max_new_tokens, a stop string (never emitted), cancellation between tokens, and a hard
//! deadline that terminates a running step; and seeded sampling is reproducible.

mod common;

use std::time::Duration;

use common::root;
use gemba::model::providers::ProviderPolicy;
use gemba::model::{runtime, CancelToken, Engine, Event, StopReason};

const Q: &str = "What is the pressure on press 1?";
const A: &str = "The pressure on press 1 is 8.4 bar. That is above the limit of 8.0 bar.";

fn engine() -> Engine {
    let rt = runtime::init(None).expect("ONNX Runtime (run scripts/setup test)");
    Engine::load(
        rt,
        &root().join("models/tiny-qwen2/fp32"),
        &ProviderPolicy::default(),
    )
    .unwrap()
}

fn run(
    e: &mut Engine,
    params: &gemba::model::GenerateParams,
    cancel: &CancelToken,
    mut each: impl FnMut(&Event),
) -> (gemba::model::Done, String) {
    let ids = e.prompt_ids(Q, None, false).unwrap();
    let mut text = String::new();
    let done = e
        .generate_ids(ids, params, cancel, &mut |ev| {
            if let Event::Token(t) = &ev {
                text.push_str(&t.text);
            }
            each(&ev);
        })
        .unwrap();
    (done, text)
}

#[test]
fn every_way_a_generation_ends() {
    let mut e = engine();
    let base = e.default_params();

    // eos: the whole memorised answer, then the end-of-turn token.
    let (d, text) = run(&mut e, &base, &CancelToken::new(), |_| {});
    assert_eq!(d.stop, StopReason::Eos);
    assert_eq!(text.trim(), A);
    let full = d.generated_tokens;

    // max_new_tokens.
    let mut p = base.clone();
    p.max_new_tokens = Some(5);
    let (d, _) = run(&mut e, &p, &CancelToken::new(), |_| {});
    assert_eq!(
        (d.stop.clone(), d.generated_tokens),
        (StopReason::MaxNewTokens, 5)
    );

    // max_length counts the prompt, as in ORT-GenAI.
    let mut p = base.clone();
    p.max_length = d.prompt_tokens + 3;
    let (d, _) = run(&mut e, &p, &CancelToken::new(), |_| {});
    assert_eq!(
        (d.stop.clone(), d.generated_tokens),
        (StopReason::MaxLength, 3)
    );

    // A stop string ends the reply and is never emitted, even split across tokens.
    let mut p = base.clone();
    p.stop_strings = vec!["8.4 bar".into()];
    let (d, text) = run(&mut e, &p, &CancelToken::new(), |_| {});
    assert_eq!(d.stop, StopReason::StopString("8.4 bar".into()));
    assert_eq!(text, "The pressure on press 1 is ");
    assert_eq!(d.text, text);

    // Cancellation between tokens.
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let mut n = 0;
    let (d, _) = run(&mut e, &base, &cancel, |ev| {
        if matches!(ev, Event::Token(_)) {
            n += 1;
            if n == 4 {
                c2.cancel();
            }
        }
    });
    assert_eq!(
        (d.stop.clone(), d.generated_tokens),
        (StopReason::Cancelled, 4)
    );
    assert!(d.generated_tokens < full);

    // A hard deadline: a watcher terminates the step running when time is up, and between steps
    // the engine checks it itself (a deadline shorter than the prefill stops at the first token
    // even when the watcher thread is not scheduled in time on a busy machine).
    let mut p = base.clone();
    p.deadline = Some(Duration::from_micros(1));
    let (d, _) = run(&mut e, &p, &CancelToken::new(), |_| {});
    assert_eq!(d.stop, StopReason::Deadline);
    assert!(d.generated_tokens < full);

    // The engine is fine afterwards: the same answer again.
    let (d, text) = run(&mut e, &base, &CancelToken::new(), |_| {});
    assert_eq!((d.stop, text.trim()), (StopReason::Eos, A));
}

#[test]
fn seeded_sampling_is_reproducible_and_the_seed_matters() {
    let mut e = engine();
    let mut p = e.default_params();
    p.sampling.do_sample = true;
    p.sampling.temperature = 1.5;
    p.sampling.top_k = 0;
    p.sampling.top_p = 1.0;
    p.max_new_tokens = Some(24);
    let ids = |e: &mut Engine, p: &gemba::model::GenerateParams| {
        let mut v = Vec::new();
        run(e, p, &CancelToken::new(), |ev| {
            if let Event::Token(t) = ev {
                v.push(t.id);
            }
        });
        v
    };
    p.sampling.seed = 7;
    let a = ids(&mut e, &p);
    let b = ids(&mut e, &p);
    assert_eq!(a, b, "same seed, same tokens");
    let others: Vec<Vec<u32>> = (8..12)
        .map(|s| {
            p.sampling.seed = s;
            ids(&mut e, &p)
        })
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "a hot temperature with other seeds gives other tokens"
    );
}
