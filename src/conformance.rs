//! `gemba debug …`: the gemba side of the conformance checks against onnxruntime-genai.
//!
//! Each mode reads the same JSON as `tests/conformance/genai_greedy.py` (the ORT-GenAI side) and
//! prints the same JSON shape, so a test (or a person) can diff the two outputs directly:
//! `greedy` generates from given prompt ids, `tokenize` tokenizes prompts plain and through the
//! chat template. Running them as a separate process lets one test compare several ONNX Runtime
//! versions (one library per process).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::exact::Switch;
use crate::model::providers::ProviderPolicy;
use crate::model::tokenizer::ChatMessage;
use crate::model::{runtime, CancelToken, Engine, StopReason};

#[derive(Deserialize)]
struct GreedyCases {
    bundle: PathBuf,
    #[serde(default)]
    share_buffer: Option<bool>,
    /// Prompt-lookup speculation: true, false (the default) or "auto" (as the daemon decides).
    #[serde(default)]
    speculate: Option<Switch>,
    /// KV prefix reuse across the cases: true, false (the default) or "auto".
    #[serde(default)]
    prefix_cache: Option<Switch>,
    /// Verify every draft whole (up to 8 tokens) instead of as many tokens as the tuner finds
    /// worth it: the most multi-row runs, the same ones run after run (tests of exactness).
    #[serde(default)]
    fixed_drafts: bool,
    cases: Vec<GreedyCase>,
}

#[derive(Deserialize)]
struct GreedyCase {
    name: String,
    input_ids: Vec<u32>,
    #[serde(default)]
    max_length: Option<usize>,
}

#[derive(Serialize)]
struct GreedyOut {
    onnxruntime_version: String,
    share_buffer: bool,
    /// What the switches came to (after `auto`).
    speculation_on: bool,
    prefix_cache_on: bool,
    cases: Vec<GreedyCaseOut>,
}

/// Applies the cases' switches to the engine; the speculation they came to.
fn speedups(
    engine: &mut Engine,
    speculate: Option<Switch>,
    prefix_cache: Option<Switch>,
    fixed_drafts: bool,
) -> crate::model::speculate::Speculation {
    let bytes = match prefix_cache.unwrap_or(Switch::Off) {
        Switch::On => Some(crate::model::exact::DEFAULT_PREFIX_BYTES),
        Switch::Off => Some(0),
        Switch::Auto => None,
    };
    let mut p = engine.default_params();
    engine.apply_speedups(
        &mut p,
        speculate.unwrap_or(Switch::Off),
        bytes,
        std::time::Duration::from_secs(600),
    );
    p.speculation.tuned = !fixed_drafts;
    p.speculation
}

#[derive(Serialize)]
struct GreedyCaseOut {
    name: String,
    output_ids: Vec<u32>,
    finish: &'static str,
    /// Drafted tokens the decoder confirmed (0 without speculation).
    accepted_drafts: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    reused_prefix_tokens: usize,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Greedy generation from prompt ids, as `genai_greedy.py greedy` does it. Like ORT-GenAI's
/// sequence, the output leaves out a final eos id.
pub fn greedy(ort: Option<&Path>, cases_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(cases_file)
        .with_context(|| format!("reading {}", cases_file.display()))?;
    let cases: GreedyCases =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cases_file.display()))?;
    let rt = runtime::init(ort)?;
    let dir = resolve(cases_file, &cases.bundle);
    let mut engine = Engine::load(rt, &dir, &ProviderPolicy::default())?;
    if let Some(sb) = cases.share_buffer {
        engine.decoder.set_share_buffer(sb);
    }
    let speculation = speedups(
        &mut engine,
        cases.speculate,
        cases.prefix_cache,
        cases.fixed_drafts,
    );
    let mut out = GreedyOut {
        onnxruntime_version: rt.version.clone(),
        share_buffer: engine.decoder.shares_buffer(),
        speculation_on: speculation.is_on(),
        prefix_cache_on: engine.decoder.prefix.is_on(),
        cases: Vec::new(),
    };
    for c in cases.cases {
        let mut params = engine.default_params();
        params.sampling.do_sample = false;
        params.speculation = speculation;
        if let Some(m) = c.max_length {
            params.max_length = m;
        }
        let mut ids = Vec::new();
        let done = engine.generate_ids(c.input_ids, &params, &CancelToken::new(), &mut |ev| {
            if let crate::model::Event::Token(t) = ev {
                ids.push(t.id);
            }
        })?;
        let finish = match done.stop {
            StopReason::Eos => {
                ids.pop();
                "eos"
            }
            _ => "length",
        };
        out.cases.push(GreedyCaseOut {
            name: c.name,
            output_ids: ids,
            finish,
            accepted_drafts: done.accepted_drafts,
            reused_prefix_tokens: done.reused_prefix_tokens,
        });
    }
    Ok(serde_json::to_string_pretty(&out)?)
}

#[derive(Deserialize)]
struct Prompts {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    user: String,
    #[serde(default)]
    system: Option<String>,
}

#[derive(Serialize)]
struct TokenizeOut {
    prompts: Vec<TokenizeCase>,
}

#[derive(Serialize)]
struct TokenizeCase {
    name: String,
    plain_ids: Vec<u32>,
    chat_text: String,
    chat_ids: Vec<u32>,
}

/// Tokenization of each prompt, plain and through the chat template.
pub fn tokenize(bundle_dir: &Path, prompts_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(prompts_file)
        .with_context(|| format!("reading {}", prompts_file.display()))?;
    let prompts: Prompts = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", prompts_file.display()))?;
    let bundle = crate::model::bundle::Bundle::open(bundle_dir)?;
    let tok = &bundle.tokenizer;
    let mut out = TokenizeOut {
        prompts: Vec::new(),
    };
    for p in prompts.prompts {
        let mut messages = Vec::new();
        if let Some(s) = &p.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(ChatMessage::user(p.user.clone()));
        out.prompts.push(TokenizeCase {
            name: p.name,
            plain_ids: tok.encode(&p.user)?,
            chat_text: tok.apply_chat_template(&messages, true)?,
            chat_ids: tok.prompt_ids(&messages, false)?,
        });
    }
    Ok(serde_json::to_string_pretty(&out)?)
}

#[derive(Deserialize)]
struct MmCases {
    bundle: PathBuf,
    /// Prompt-lookup speculation: true, false (the default) or "auto".
    #[serde(default)]
    speculate: Option<Switch>,
    /// KV prefix reuse across the cases: true, false (the default) or "auto".
    #[serde(default)]
    prefix_cache: Option<Switch>,
    /// Verify every draft whole (up to 8 tokens) instead of as many tokens as the tuner finds
    /// worth it: the most multi-row runs, the same ones run after run (tests of exactness).
    #[serde(default)]
    fixed_drafts: bool,
    cases: Vec<MmCase>,
}

#[derive(Deserialize)]
struct MmCase {
    name: String,
    /// The full prompt, chat template already applied (conformance) …
    #[serde(default)]
    prompt: Option<String>,
    /// … or the user turn, rendered through the bundle's chat template here (evaluation).
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    images: Vec<PathBuf>,
    #[serde(default)]
    audios: Vec<PathBuf>,
    #[serde(default)]
    max_length: Option<usize>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

#[derive(Serialize)]
struct MmOut {
    onnxruntime_version: String,
    /// What the switches came to (after `auto`).
    speculation_on: bool,
    prefix_cache_on: bool,
    cases: Vec<MmCaseOut>,
}

#[derive(Serialize)]
struct MmCaseOut {
    name: String,
    prompt_tokens: usize,
    output_ids: Vec<u32>,
    finish: &'static str,
    /// The decoded reply (markers such as `[cam:NAME]` included).
    text: String,
    /// Drafted tokens the decoder confirmed (0 without speculation).
    accepted_drafts: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    reused_prefix_tokens: usize,
}

/// Greedy generation from a full (already templated) prompt with image and audio files, as
/// `genai_mm_greedy.py` does it.
pub fn greedy_multimodal(ort: Option<&Path>, cases_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(cases_file)
        .with_context(|| format!("reading {}", cases_file.display()))?;
    let cases: MmCases =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cases_file.display()))?;
    let rt = runtime::init(ort)?;
    let mut engine = Engine::load(
        rt,
        &resolve(cases_file, &cases.bundle),
        &ProviderPolicy::default(),
    )?;
    let speculation = speedups(
        &mut engine,
        cases.speculate,
        cases.prefix_cache,
        cases.fixed_drafts,
    );
    let mut out = MmOut {
        onnxruntime_version: rt.version.clone(),
        speculation_on: speculation.is_on(),
        prefix_cache_on: engine.decoder.prefix.is_on(),
        cases: Vec::new(),
    };
    for c in cases.cases {
        let mut params = engine.default_params();
        params.sampling.do_sample = false;
        if let Some(m) = c.max_length {
            params.max_length = m;
        }
        params.max_new_tokens = c.max_new_tokens;
        params.speculation = speculation;
        let media = crate::model::engine::MediaFiles {
            images: c.images.iter().map(|p| resolve(cases_file, p)).collect(),
            audio: c.audios.iter().map(|p| resolve(cases_file, p)).collect(),
        };
        let mut ids = Vec::new();
        let (prompt, raw) = match (&c.prompt, &c.user) {
            (Some(p), _) => (p.clone(), true),
            (None, Some(u)) => (u.clone(), false),
            (None, None) => anyhow::bail!("case {}: give \"prompt\" or \"user\"", c.name),
        };
        let done = engine.ask_files(
            &prompt,
            None,
            raw,
            &media,
            &params,
            &CancelToken::new(),
            &mut |ev| {
                if let crate::model::Event::Token(t) = ev {
                    ids.push(t.id);
                }
            },
        )?;
        let finish = match done.stop {
            StopReason::Eos => {
                ids.pop();
                "eos"
            }
            _ => "length",
        };
        out.cases.push(MmCaseOut {
            name: c.name,
            prompt_tokens: done.prompt_tokens,
            output_ids: ids,
            finish,
            text: done.text,
            accepted_drafts: done.accepted_drafts,
            reused_prefix_tokens: done.reused_prefix_tokens,
        });
    }
    Ok(serde_json::to_string_pretty(&out)?)
}
