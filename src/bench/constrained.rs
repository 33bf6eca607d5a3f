//! `gemba bench decode --json-schema FILE` (or `--choice`, `--regex`): what the token mask costs.
//!
//! In: a bundle, a format and a question. Out: decode tokens/s with the constraint against the
//! same engine unconstrained, forced to the same number of tokens (greedy, no speculation, no
//! prefix reuse), alternating which runs first round by round on the same warm engine, and the
//! overhead per round (median and spread). Also the mask's own time per token, measured by
//! replaying the constrained answer through a fresh constraint.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::model::constrain::{Constraint, ResponseFormat, Vocabulary};
use crate::model::providers::ProviderPolicy;
use crate::model::runtime::Runtime;
use crate::model::tokenizer::ChatMessage;
use crate::model::{CancelToken, Engine, GenerateParams};

#[derive(Debug, Serialize)]
pub struct ConstrainedBench {
    pub bundle: String,
    pub vocab_size: usize,
    pub format: ResponseFormat,
    pub answer: String,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub threads: usize,
    pub repeat: usize,
    /// Decode tokens/s per round.
    pub plain_tok_s: Vec<f64>,
    pub constrained_tok_s: Vec<f64>,
    /// plain / constrained − 1, in percent, per round.
    pub overhead_pct: Vec<f64>,
    pub overhead_median_pct: f64,
    /// The mask alone (compute + apply + commit), microseconds per token, median of rounds.
    pub mask_us_per_token: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

impl std::fmt::Display for ConstrainedBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lo, hi) = self
            .overhead_pct
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        writeln!(
            f,
            "constrained decode bench: {} ({} tokens in the vocabulary), prompt {} + {} generated tokens, {} threads, {} rounds",
            self.bundle, self.vocab_size, self.prompt_tokens, self.gen_tokens, self.threads, self.repeat
        )?;
        writeln!(f, "answer: {}", self.answer)?;
        writeln!(
            f,
            "decode tok/s, median: unconstrained {:.1}, constrained {:.1}",
            median(&self.plain_tok_s),
            median(&self.constrained_tok_s)
        )?;
        writeln!(
            f,
            "overhead: {:+.1} % median (rounds {lo:+.1} … {hi:+.1} %); the mask alone {:.0} µs per token",
            self.overhead_median_pct, self.mask_us_per_token
        )
    }
}

/// Runs the comparison; see the module docs.
pub fn constrained(
    rt: &Runtime,
    dir: &Path,
    format: &ResponseFormat,
    question: &str,
    gen: usize,
    threads: usize,
    repeat: usize,
) -> Result<ConstrainedBench> {
    let policy = ProviderPolicy {
        intra_op_threads: Some(threads),
        ..Default::default()
    };
    let mut engine = Engine::load(rt, dir, &policy)?;
    let vocab = Vocabulary::of_bundle(&engine.bundle)?;
    format.check(&vocab)?;
    let prompt = engine
        .bundle
        .tokenizer
        .prompt_ids(&[ChatMessage::user(question)], false)?;
    let limits = engine.decoder.prefix.limits;
    engine
        .decoder
        .prefix
        .set_limits(crate::model::prefix::PrefixLimits {
            max_bytes: 0,
            ..limits
        });
    let mut base: GenerateParams = engine.default_params();
    base.sampling.do_sample = false;
    base.speculation = crate::model::speculate::Speculation::OFF;
    base.max_length = base.max_length.max(prompt.len() + gen);
    base.max_new_tokens = Some(gen);
    let mut with = base.clone();
    with.response_format = Some(format.clone());
    let cancel = CancelToken::new();
    // Warm-up; the constrained answer fixes how many tokens both contenders generate.
    let first = engine.generate_ids(prompt.clone(), &with, &cancel, &mut |_| {})?;
    let n = first.generated_tokens;
    if n < 2 {
        bail!("the constrained answer has {n} token(s); a decode speed needs at least 2");
    }
    let mut plain = base.clone();
    plain.max_new_tokens = Some(n);
    plain.min_length = prompt.len() + n;
    engine.generate_ids(prompt.clone(), &plain, &cancel, &mut |_| {})?;
    let ids: Vec<u32> = {
        let mut ids = Vec::new();
        engine.generate_ids(prompt.clone(), &with, &cancel, &mut |ev| {
            if let crate::model::Event::Token(t) = ev {
                ids.push(t.id);
            }
        })?;
        ids
    };
    let (mut p, mut c, mut over, mut mask) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..repeat {
        let mut pair = [0.0f64; 2];
        for k in 0..2 {
            // Alternate which contender runs first.
            let constrained_turn = (k + round) % 2 == 1;
            let params = if constrained_turn { &with } else { &plain };
            let d = engine.generate_ids(prompt.clone(), params, &cancel, &mut |_| {})?;
            if d.generated_tokens != n {
                bail!(
                    "a run generated {} tokens instead of {n} ({:?})",
                    d.generated_tokens,
                    d.stop
                );
            }
            pair[usize::from(constrained_turn)] = d.decode_tokens_per_s;
        }
        p.push(pair[0]);
        c.push(pair[1]);
        over.push((pair[0] / pair[1] - 1.0) * 100.0);
        // The mask alone over the same answer: compute, apply to a logits row, commit.
        let mut cons = Constraint::new(format, &vocab)?;
        let mut row = vec![0.0f32; vocab.size()];
        let t0 = Instant::now();
        for &id in &ids {
            cons.apply(&mut row)?;
            if id != vocab.eos() {
                cons.commit(id)?;
            }
        }
        mask.push(t0.elapsed().as_secs_f64() * 1e6 / ids.len() as f64);
    }
    Ok(ConstrainedBench {
        bundle: dir.display().to_string(),
        vocab_size: vocab.size(),
        format: format.clone(),
        answer: first.text,
        prompt_tokens: prompt.len(),
        gen_tokens: n,
        threads,
        repeat,
        overhead_median_pct: median(&over),
        plain_tok_s: p,
        constrained_tok_s: c,
        overhead_pct: over,
        mask_us_per_token: median(&mask),
    })
}
