//! Generation: prefill, then one decoder run per token with the KV cache, streamed as events.
//!
//! The KV cache is never copied by gemba. With `past_present_share_buffer` each layer's key and
//! value live in one buffer of `[1, kv_heads, capacity, head_size]`, bound through an
//! `IoBinding` as both the past input and the present output, so the attention op appends in
//! place (the buffer is allocated once per engine and grown only when a longer generation needs
//! it). Without it, each step's present outputs are bound as the next step's past inputs (moved,
//! not copied). On a GPU provider the cache is allocated on the device; only the last position's
//! logits come back to the CPU for sampling.
//!
//! Feeding follows ORT-GenAI's decoder-only model for batch 1 (`position_inputs.cpp`,
//! `kv_cache.cpp`): attention_mask is ones over the whole sequence so far, position_ids count up
//! from the past length, and generation stops at `search.max_length` total tokens, at an eos id,
//! at `max_new_tokens`, at a stop string, on cancellation between tokens, or at a hard deadline
//! that terminates the running step.
//!
//! What flows out: [`Event`]s through a callback — every token, every sentence as soon as it is
//! final, and [`Done`] with the timings and the providers that actually ran.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, RunOptions, Session};
use ort::value::{DynTensor, DynValue, Tensor};
use serde::Serialize;

use super::bundle::{Bundle, BundleError, DecoderIo, FloatType, IntType, TokenInput};
use super::constrain::{ConstrainError, Constraint, ResponseFormat, Vocabulary};
use super::prefix::{self as prefixes, HostKv, PrefixCache, PrefixLimits};
use super::providers::{build_session, ProviderKind, ProviderPolicy, ProviderReport};
use super::runtime::Runtime;
use super::sample::{Sampler, SamplingParams};
use super::speculate::{self, Speculation};
use super::stream::{SplitterConfig, TextStream};
use super::Sentence;

mod state;
use state::RequestState;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("preparing the prompt: {0}")]
    Prompt(String),
    #[error("the prompt has {prompt} tokens, but the bundle allows {max} in total (search.max_length / model.context_length)")]
    PromptTooLong { prompt: usize, max: usize },
    #[error("decoder step {step} failed: {reason}")]
    Run { step: usize, reason: String },
    #[error("decoder output {name}: {reason}")]
    Output { name: String, reason: String },
    #[error("cannot allocate the KV cache ({layers} layers × [1, {kv_heads}, {capacity}, {head_size}]): {reason}")]
    KvAlloc {
        layers: usize,
        kv_heads: usize,
        capacity: usize,
        head_size: usize,
        reason: String,
    },
    #[error("invalid generation settings: {0}")]
    Params(String),
    #[error("token stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Constrain(#[from] ConstrainError),
}

/// Per-request generation settings; defaults come from the bundle's `search` section.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Total tokens (prompt + generated) at which generation stops, as ORT-GenAI's max_length.
    pub max_length: usize,
    /// Eos is suppressed until the sequence (prompt + generated) is this long.
    pub min_length: usize,
    pub max_new_tokens: Option<usize>,
    pub stop_strings: Vec<String>,
    /// Generation is terminated, mid-step if need be, once this much time has passed.
    pub deadline: Option<Duration>,
    pub splitter: SplitterConfig,
    /// Where the clock starts for the reported timings (e.g. before pre-processing and the
    /// encoders of a multimodal prompt); default: when the decoder starts.
    pub started: Option<Instant>,
    /// Prompt-lookup speculative decoding ([`Speculation::OFF`] here: one decoder run per token;
    /// callers apply `auto` through `Engine::apply_speedups`, which turns it on only where
    /// model::exact's probe finds greedy output exact). Sampled output keeps its distribution.
    pub speculation: Speculation,
    /// Constrained decoding: the answer is held to this format (speculation is off then).
    pub response_format: Option<ResponseFormat>,
}

impl GenerateParams {
    /// The bundle's search defaults.
    pub fn from_bundle(bundle: &Bundle) -> GenerateParams {
        let s = &bundle.config.search;
        GenerateParams {
            sampling: SamplingParams {
                do_sample: s.do_sample,
                temperature: s.temperature,
                top_k: s.top_k as usize,
                // Passed through as ORT-GenAI has it (0 by default): the sampler applies the
                // same top_k/top_p combination rules.
                top_p: s.top_p,
                repetition_penalty: s.repetition_penalty,
                seed: if s.random_seed < 0 {
                    0
                } else {
                    s.random_seed as u64
                },
            },
            max_length: s.max_length as usize,
            min_length: s.min_length as usize,
            max_new_tokens: None,
            stop_strings: Vec::new(),
            deadline: None,
            splitter: SplitterConfig::default(),
            started: None,
            speculation: Speculation::OFF,
            response_format: None,
        }
    }
}

/// Cancels a generation between tokens; cheap to clone and share with another thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum StopReason {
    Eos,
    MaxLength,
    MaxNewTokens,
    StopString(String),
    Cancelled,
    Deadline,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenEvent {
    pub index: usize,
    pub id: u32,
    /// Text that became final with this token (may be empty: a character split across tokens,
    /// or text held back while it may still be the start of a stop string).
    pub text: String,
    #[serde(serialize_with = "ser_ms")]
    pub at: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Done {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop: StopReason,
    pub text: String,
    pub sentences: usize,
    /// Milliseconds from the start of `generate` (prefill included).
    pub time_to_first_token_ms: f64,
    pub time_to_first_sentence_ms: Option<f64>,
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    /// Tokens after the first, over the time after the first.
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
    /// Decoder runs after the prefill, and the drafted tokens they confirmed (speculation: each
    /// run yields one token plus its accepted drafts).
    pub decoder_runs: usize,
    pub accepted_drafts: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of the prefill.
    pub reused_prefix_tokens: usize,
    /// component → provider that actually ran it.
    pub providers: BTreeMap<String, String>,
    /// The answer parsed, when a JSON schema held it (`None` otherwise, or when the generation
    /// was cut short before the document was complete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured: Option<serde_json::Value>,
}

/// What a generation streams out.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Token(TokenEvent),
    Sentence(Sentence),
    Done(Done),
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_micros() as f64 / 1000.0)
}

/// What the first decoder run consumes: token ids, or embeddings made by an embedding session.
pub enum PromptInput {
    Ids(Vec<u32>),
    /// `[1, n, hidden]` embeddings and the ids they came from (for repetition penalty and length).
    Embeds {
        ids: Vec<u32>,
        embeds: DynValue,
    },
}

impl PromptInput {
    pub fn ids(&self) -> &[u32] {
        match self {
            PromptInput::Ids(ids) => ids,
            PromptInput::Embeds { ids, .. } => ids,
        }
    }
}

/// Produces embeddings for generated tokens when the decoder takes `inputs_embeds`.
pub trait Embedder {
    fn embed(&mut self, ids: &[u32]) -> Result<DynValue, GenerateError>;
}

/// The KV cache, and the binding that feeds it (one binding per generation: the cache and the
/// logits output are bound once, only the per-token inputs change between steps).
pub(crate) enum Kv {
    /// One buffer per tensor, bound as past and present.
    Shared {
        keys: Vec<DynTensor>,
        values: Vec<DynTensor>,
        capacity: usize,
        binding: Option<IoBinding>,
    },
    /// The pasts for the next step (the last step's presents, moved).
    Moving {
        keys: Vec<DynValue>,
        values: Vec<DynValue>,
        binding: Option<IoBinding>,
    },
}

/// The decoder session and everything it needs to run token by token.
pub struct Decoder {
    pub session: Session,
    pub io: DecoderIo,
    pub report: ProviderReport,
    share_buffer: bool,
    kv_alloc: Allocator,
    pub(crate) kv_on_device: bool,
    shared: Option<Kv>,
    pub(crate) logits_buf: Vec<f32>,
    run_options: Arc<RunOptions>,
    /// Prefilled sequences kept for prompts that start the same way (host KV only).
    pub prefix: PrefixCache,
    /// Which LoRA adapter is active (0: none); part of a prefix entry's key.
    pub(crate) adapter_tag: usize,
    /// How many drafted tokens a speculative run verifies, from this decoder's measured runs.
    pub(crate) tuner: speculate::Tuner,
}

impl Decoder {
    pub fn load(
        rt: &Runtime,
        bundle: &Bundle,
        policy: &ProviderPolicy,
    ) -> Result<Decoder, BundleError> {
        let d = &bundle.config.model.decoder;
        let file = bundle.file(&d.filename);
        let (session, report) = build_session(
            rt,
            "decoder",
            &file,
            &bundle.config.decoder_session_options(),
            "model.decoder",
            policy,
        )?;
        let io = DecoderIo::from_session(&session, &bundle.config, &file)?;
        let gpu = matches!(report.actual(), ProviderKind::Cuda | ProviderKind::Tensorrt);
        let kv_alloc = if gpu {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                policy.cuda.device_id,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .and_then(|mi| Allocator::new(&session, mi));
            match info {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("decoder: cannot allocate the KV cache on the GPU ({e}); keeping it in host memory");
                    Allocator::default()
                }
            }
        } else {
            Allocator::default()
        };
        let kv_on_device = !kv_alloc.memory_info().is_cpu_accessible();
        let run_options = Arc::new(RunOptions::new().map_err(|e| BundleError::Graph {
            file: file.clone(),
            msg: format!("cannot create run options: {e}"),
        })?);
        Ok(Decoder {
            session,
            io,
            report,
            share_buffer: bundle.config.search.past_present_share_buffer,
            kv_alloc,
            kv_on_device,
            shared: None,
            logits_buf: Vec::new(),
            run_options,
            // Off until configured (`Engine::apply_speedups`: auto turns it on where exact).
            prefix: PrefixCache::new(PrefixLimits {
                max_bytes: 0,
                ..PrefixLimits::default()
            }),
            adapter_tag: 0,
            tuner: speculate::Tuner::default(),
        })
    }

    /// Whether the cache is one shared buffer (`past_present_share_buffer`).
    pub fn shares_buffer(&self) -> bool {
        self.share_buffer
    }

    /// Overrides the bundle's `past_present_share_buffer` (tests compare both layouts).
    pub fn set_share_buffer(&mut self, on: bool) {
        self.share_buffer = on;
        self.shared = None;
    }

    /// Activates a LoRA adapter for the next generations (`None`: the base weights). The run
    /// options are made fresh, since ONNX Runtime adds adapters to them and cannot remove one.
    pub fn set_adapter(
        &mut self,
        adapter: Option<&ort::session::Adapter>,
    ) -> Result<(), GenerateError> {
        let err = |e: ort::Error| GenerateError::Params(format!("run options: {e}"));
        let mut ro = RunOptions::new().map_err(err)?;
        if let Some(a) = adapter {
            ro.add_adapter(a).map_err(err)?;
        }
        self.adapter_tag = adapter
            .map(|a| a as *const ort::session::Adapter as usize)
            .unwrap_or(0);
        self.run_options = Arc::new(ro);
        Ok(())
    }

    /// A handle that terminates the step running now (from any thread).
    pub fn terminator(&self) -> Arc<RunOptions> {
        Arc::clone(&self.run_options)
    }

    fn kv_shape(&self, seq: usize) -> [i64; 4] {
        [
            1,
            self.io.kv_heads as i64,
            seq as i64,
            self.io.head_size as i64,
        ]
    }

    fn alloc_kv(&self, seq: usize) -> Result<DynTensor, GenerateError> {
        DynTensor::new(&self.kv_alloc, self.io.kv_type.ort(), self.kv_shape(seq)).map_err(|e| {
            GenerateError::KvAlloc {
                layers: self.io.layers,
                kv_heads: self.io.kv_heads,
                capacity: seq,
                head_size: self.io.head_size,
                reason: e.to_string(),
            }
        })
    }

    /// Resets the cache for a new sequence of at most `capacity` tokens and binds what stays
    /// bound for the whole generation.
    pub(crate) fn reset(&mut self, capacity: usize) -> Result<Kv, GenerateError> {
        let bind_err = |e: ort::Error| GenerateError::Run {
            step: 0,
            reason: format!("binding: {e}"),
        };
        let mut kv = if self.share_buffer {
            // Reuse the engine's buffers when they are large enough: a new query must not cost a
            // fresh allocation of the whole cache.
            match self.shared.take() {
                Some(Kv::Shared {
                    keys,
                    values,
                    capacity: have,
                    ..
                }) if have >= capacity => Kv::Shared {
                    keys,
                    values,
                    capacity: have,
                    binding: None,
                },
                _ => {
                    let mut keys = Vec::with_capacity(self.io.layers);
                    let mut values = Vec::with_capacity(self.io.layers);
                    for _ in 0..self.io.layers {
                        keys.push(self.alloc_kv(capacity)?);
                        values.push(self.alloc_kv(capacity)?);
                    }
                    Kv::Shared {
                        keys,
                        values,
                        capacity,
                        binding: None,
                    }
                }
            }
        } else {
            let mut keys = Vec::with_capacity(self.io.layers);
            let mut values = Vec::with_capacity(self.io.layers);
            for _ in 0..self.io.layers {
                keys.push(self.alloc_kv(0)?.into_dyn());
                values.push(self.alloc_kv(0)?.into_dyn());
            }
            Kv::Moving {
                keys,
                values,
                binding: None,
            }
        };
        let mut b = self.session.create_binding().map_err(bind_err)?;
        match &mut kv {
            Kv::Shared {
                keys,
                values,
                binding,
                ..
            } => {
                for i in 0..self.io.layers {
                    b.bind_input(self.io.past_key[i].as_str(), &keys[i])
                        .map_err(bind_err)?;
                    b.bind_input(self.io.past_value[i].as_str(), &values[i])
                        .map_err(bind_err)?;
                    b.bind_output(self.io.present_key[i].as_str(), keys[i].view_mut())
                        .map_err(bind_err)?;
                    b.bind_output(self.io.present_value[i].as_str(), values[i].view_mut())
                        .map_err(bind_err)?;
                }
                *binding = Some(b);
            }
            Kv::Moving {
                keys,
                values,
                binding,
            } => {
                for i in 0..self.io.layers {
                    b.bind_input(self.io.past_key[i].as_str(), &keys[i])
                        .map_err(bind_err)?;
                    b.bind_input(self.io.past_value[i].as_str(), &values[i])
                        .map_err(bind_err)?;
                }
                *binding = Some(b);
            }
        }
        Ok(kv)
    }

    /// Keeps a shared cache for the next generation (its binding is per generation).
    pub(crate) fn keep(&mut self, kv: Kv) {
        if let Kv::Shared {
            keys,
            values,
            capacity,
            ..
        } = kv
        {
            self.shared = Some(Kv::Shared {
                keys,
                values,
                capacity,
                binding: None,
            });
        }
    }

    /// One decoder run over `n` new positions after `past` cached ones. Returns the logits of the
    /// last position (as f32, in a buffer reused across steps).
    pub(crate) fn step(
        &mut self,
        kv: &mut Kv,
        tokens: StepTokens<'_>,
        past: usize,
        step: usize,
        all_rows: bool,
    ) -> Result<&mut [f32], GenerateError> {
        let run_err = |e: ort::Error| GenerateError::Run {
            step,
            reason: e.to_string(),
        };
        let n = tokens.len();
        let total = past + n;
        let moving = matches!(kv, Kv::Moving { .. });
        let binding = match kv {
            Kv::Shared { binding, .. } | Kv::Moving { binding, .. } => {
                binding.as_mut().expect("bound in reset")
            }
        };
        match (&self.io.token, tokens) {
            (TokenInput::Ids { name, ty }, StepTokens::Ids(ids)) => {
                let v = int_tensor(*ty, [1, n as i64], ids.iter().map(|&i| i as i64))
                    .map_err(run_err)?;
                binding.bind_input(name.as_str(), &v).map_err(run_err)?;
            }
            (TokenInput::Embeds { name, .. }, StepTokens::Embeds(v)) => {
                binding.bind_input(name.as_str(), v).map_err(run_err)?;
            }
            (TokenInput::Ids { .. }, StepTokens::Embeds(_)) => {
                return Err(GenerateError::Params(
                    "this decoder takes input_ids, not embeddings".into(),
                ))
            }
            (TokenInput::Embeds { .. }, StepTokens::Ids(_)) => {
                return Err(GenerateError::Params(
                    "this decoder takes inputs_embeds; an embedding session is needed".into(),
                ))
            }
        }
        if let Some((name, ty)) = &self.io.attention_mask {
            let v = int_tensor(*ty, [1, total as i64], std::iter::repeat_n(1i64, total))
                .map_err(run_err)?;
            binding.bind_input(name.as_str(), &v).map_err(run_err)?;
        }
        if let Some((name, ty)) = &self.io.position_ids {
            let v =
                int_tensor(*ty, [1, n as i64], (past as i64)..(total as i64)).map_err(run_err)?;
            binding.bind_input(name.as_str(), &v).map_err(run_err)?;
        }
        // After a run, ONNX Runtime keeps the outputs it allocated bound as pre-allocated
        // values; outputs whose shape changes from step to step are bound to the device again.
        let cpu = MemoryInfo::default();
        binding
            .bind_output_to_device(self.io.logits.as_str(), &cpu)
            .map_err(run_err)?;
        if moving {
            let kv_mem = self.kv_alloc.memory_info();
            for i in 0..self.io.layers {
                binding
                    .bind_output_to_device(self.io.present_key[i].as_str(), kv_mem)
                    .map_err(run_err)?;
                binding
                    .bind_output_to_device(self.io.present_value[i].as_str(), kv_mem)
                    .map_err(run_err)?;
            }
        }
        let mut outputs = self
            .session
            .run_binding_with_options(binding, &self.run_options)
            .map_err(run_err)?;
        let logits = take_output(&mut outputs, &self.io.logits)?;
        let mut presents = Vec::new();
        if moving {
            for i in 0..self.io.layers {
                presents.push(take_output(&mut outputs, &self.io.present_key[i])?);
                presents.push(take_output(&mut outputs, &self.io.present_value[i])?);
            }
        }
        drop(outputs);
        if let Kv::Moving {
            keys,
            values,
            binding,
        } = kv
        {
            // This step's presents are the next step's pasts: moved, never copied.
            let b = binding.as_mut().expect("bound in reset");
            let mut it = presents.into_iter();
            for i in 0..self.io.layers {
                keys[i] = it.next().expect("pushed above");
                values[i] = it.next().expect("pushed above");
                b.bind_input(self.io.past_key[i].as_str(), &keys[i])
                    .map_err(run_err)?;
                b.bind_input(self.io.past_value[i].as_str(), &values[i])
                    .map_err(run_err)?;
            }
        }
        rows_f32(
            &logits,
            self.io.logits_type,
            &self.io.logits,
            all_rows,
            &mut self.logits_buf,
        )?;
        Ok(&mut self.logits_buf)
    }

    /// Rolls the cache back to its first `len` positions after a speculative run whose drafts
    /// were not all accepted. The shared buffer needs nothing (the next run's attention mask
    /// covers only `len` positions and overwrites the rest); moving pasts are sliced (host only:
    /// speculation is off for a moving cache on a device).
    pub(crate) fn truncate(&mut self, kv: &mut Kv, len: usize) -> Result<(), GenerateError> {
        let Kv::Moving {
            keys,
            values,
            binding,
        } = kv
        else {
            return Ok(());
        };
        let err = |e: ort::Error| GenerateError::Run {
            step: 0,
            reason: format!("rolling the KV cache back: {e}"),
        };
        let b = binding.as_mut().expect("bound in reset");
        for i in 0..self.io.layers {
            keys[i] = slice_seq(&keys[i], len, self.io.kv_type).map_err(err)?;
            values[i] = slice_seq(&values[i], len, self.io.kv_type).map_err(err)?;
            b.bind_input(self.io.past_key[i].as_str(), &keys[i])
                .map_err(err)?;
            b.bind_input(self.io.past_value[i].as_str(), &values[i])
                .map_err(err)?;
        }
        Ok(())
    }

    /// Writes the first `n` positions of the prefix cache's best entry for `ids` into the fresh
    /// cache; returns `n` (0: nothing reused).
    fn restore_prefix(&mut self, kv: &mut Kv, ids: &[u32]) -> Result<usize, GenerateError> {
        if self.kv_on_device || !self.prefix.is_on() || ids.is_empty() {
            return Ok(0);
        }
        let Some((entry, n)) = self.prefix.lookup(ids, self.adapter_tag) else {
            return Ok(0);
        };
        let (heads, d, have) = (self.io.kv_heads, self.io.head_size, entry.ids.len());
        let err = |e: ort::Error| GenerateError::Run {
            step: 0,
            reason: format!("restoring a cached prefix: {e}"),
        };
        match kv {
            Kv::Shared {
                keys,
                values,
                capacity,
                ..
            } => {
                let cap = *capacity;
                for (i, (k, v)) in entry.layers.iter().enumerate() {
                    for (dst, src) in [(&mut keys[i], k), (&mut values[i], v)] {
                        match src {
                            HostKv::F32(s) => prefixes::scatter(
                                dst.try_extract_tensor_mut::<f32>().map_err(err)?.1,
                                cap,
                                s,
                                heads,
                                have,
                                d,
                                n,
                            ),
                            HostKv::F16(s) => prefixes::scatter(
                                dst.try_extract_tensor_mut::<half::f16>().map_err(err)?.1,
                                cap,
                                s,
                                heads,
                                have,
                                d,
                                n,
                            ),
                            HostKv::Bf16(s) => prefixes::scatter(
                                dst.try_extract_tensor_mut::<half::bf16>().map_err(err)?.1,
                                cap,
                                s,
                                heads,
                                have,
                                d,
                                n,
                            ),
                        }
                    }
                }
            }
            Kv::Moving {
                keys,
                values,
                binding,
            } => {
                let b = binding.as_mut().expect("bound in reset");
                let shape = [1, heads, n, d];
                for (i, (k, v)) in entry.layers.iter().enumerate() {
                    for (dst, src) in [(&mut keys[i], k), (&mut values[i], v)] {
                        *dst = match src {
                            HostKv::F32(s) => {
                                Tensor::from_array((shape, prefixes::gather(s, heads, have, d, n)))
                                    .map_err(err)?
                                    .into_dyn()
                            }
                            HostKv::F16(s) => {
                                Tensor::from_array((shape, prefixes::gather(s, heads, have, d, n)))
                                    .map_err(err)?
                                    .into_dyn()
                            }
                            HostKv::Bf16(s) => {
                                Tensor::from_array((shape, prefixes::gather(s, heads, have, d, n)))
                                    .map_err(err)?
                                    .into_dyn()
                            }
                        };
                    }
                    b.bind_input(self.io.past_key[i].as_str(), &keys[i])
                        .map_err(err)?;
                    b.bind_input(self.io.past_value[i].as_str(), &values[i])
                        .map_err(err)?;
                }
            }
        }
        Ok(n)
    }

    /// Keeps the KV of `ids` (the cache's first `ids.len()` positions) in the prefix cache.
    pub(crate) fn save_prefix(&mut self, kv: &Kv, ids: &[u32]) -> Result<(), GenerateError> {
        if self.kv_on_device || !self.prefix.wants(ids, self.adapter_tag) {
            return Ok(());
        }
        let (heads, d, len) = (self.io.kv_heads, self.io.head_size, ids.len());
        let ty = self.io.kv_type;
        let copy = |t: &DynTensor, cap: usize| host_copy(t, ty, heads, cap, d, len);
        let copy_dyn = |t: &DynValue, cap: usize| host_copy(t, ty, heads, cap, d, len);
        let mut layers = Vec::with_capacity(self.io.layers);
        match kv {
            Kv::Shared {
                keys,
                values,
                capacity,
                ..
            } => {
                for i in 0..self.io.layers {
                    layers.push((copy(&keys[i], *capacity)?, copy(&values[i], *capacity)?));
                }
            }
            Kv::Moving { keys, values, .. } => {
                for i in 0..self.io.layers {
                    let cap = keys[i].shape().get(2).copied().unwrap_or(0).max(0) as usize;
                    if cap < len {
                        return Ok(());
                    }
                    layers.push((copy_dyn(&keys[i], cap)?, copy_dyn(&values[i], cap)?));
                }
            }
        }
        self.prefix.insert(ids.to_vec(), self.adapter_tag, layers);
        Ok(())
    }
}

pub(crate) enum StepTokens<'a> {
    Ids(&'a [u32]),
    Embeds(&'a DynValue),
}

impl StepTokens<'_> {
    fn len(&self) -> usize {
        match self {
            StepTokens::Ids(ids) => ids.len(),
            StepTokens::Embeds(v) => v.shape().get(1).copied().unwrap_or(0).max(0) as usize,
        }
    }
}

fn int_tensor(
    ty: IntType,
    shape: [i64; 2],
    values: impl Iterator<Item = i64>,
) -> ort::Result<DynValue> {
    Ok(match ty {
        IntType::I64 => Tensor::from_array((shape, values.collect::<Vec<i64>>()))?.into_dyn(),
        IntType::I32 => {
            Tensor::from_array((shape, values.map(|v| v as i32).collect::<Vec<i32>>()))?.into_dyn()
        }
    })
}

/// The first `len` positions of a host `[1, heads, cap, d]` tensor, for the prefix cache.
fn host_copy<Ty: ort::value::TensorValueTypeMarker + ?Sized>(
    t: &ort::value::Value<Ty>,
    ty: FloatType,
    heads: usize,
    cap: usize,
    d: usize,
    len: usize,
) -> Result<HostKv, GenerateError> {
    let err = |e: ort::Error| GenerateError::Run {
        step: 0,
        reason: format!("keeping a prefix: {e}"),
    };
    Ok(match ty {
        FloatType::F32 => HostKv::F32(prefixes::gather(
            t.try_extract_tensor::<f32>().map_err(err)?.1,
            heads,
            cap,
            d,
            len,
        )),
        FloatType::F16 => HostKv::F16(prefixes::gather(
            t.try_extract_tensor::<half::f16>().map_err(err)?.1,
            heads,
            cap,
            d,
            len,
        )),
        FloatType::Bf16 => HostKv::Bf16(prefixes::gather(
            t.try_extract_tensor::<half::bf16>().map_err(err)?.1,
            heads,
            cap,
            d,
            len,
        )),
    })
}

/// Rows `from..` of `[1, n, hidden]` prompt embeddings (what remains after a reused prefix).
fn embeds_from(v: &DynValue, from: usize, ty: FloatType) -> Result<DynValue, GenerateError> {
    fn cut<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        v: &DynValue,
        from: usize,
    ) -> ort::Result<DynValue> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        let (n, h) = (shape[1] as usize, shape[2] as usize);
        Ok(Tensor::from_array(([1, n - from, h], data[from * h..n * h].to_vec()))?.into_dyn())
    }
    let r = match ty {
        FloatType::F32 => cut::<f32>(v, from),
        FloatType::F16 => cut::<half::f16>(v, from),
        FloatType::Bf16 => cut::<half::bf16>(v, from),
    };
    r.map_err(|e| GenerateError::Run {
        step: 0,
        reason: format!("prompt embeddings after a cached prefix: {e}"),
    })
}

/// The first `len` positions of a host `[1, heads, seq, head_size]` tensor, as a new tensor.
fn slice_seq(v: &DynValue, len: usize, ty: FloatType) -> ort::Result<DynValue> {
    fn cut<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        v: &DynValue,
        len: usize,
    ) -> ort::Result<DynValue> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        let (b, h, seq, d) = (
            shape[0] as usize,
            shape[1] as usize,
            shape[2] as usize,
            shape[3] as usize,
        );
        let len = len.min(seq);
        let mut out = Vec::with_capacity(b * h * len * d);
        for bh in 0..b * h {
            let from = bh * seq * d;
            out.extend_from_slice(&data[from..from + len * d]);
        }
        Ok(Tensor::from_array(([b, h, len, d], out))?.into_dyn())
    }
    match ty {
        FloatType::F32 => cut::<f32>(v, len),
        FloatType::F16 => cut::<half::f16>(v, len),
        FloatType::Bf16 => cut::<half::bf16>(v, len),
    }
}

fn take_output(
    outputs: &mut ort::session::SessionOutputs<'_>,
    name: &str,
) -> Result<DynValue, GenerateError> {
    outputs.remove(name).ok_or_else(|| GenerateError::Output {
        name: name.into(),
        reason: "missing from the run's outputs".into(),
    })
}

/// Copies the last position of `[1, seq, vocab]` logits (every position when `all`) into `out`
/// as f32.
fn rows_f32(
    v: &DynValue,
    ty: FloatType,
    name: &str,
    all: bool,
    out: &mut Vec<f32>,
) -> Result<(), GenerateError> {
    let err = |reason: String| GenerateError::Output {
        name: name.into(),
        reason,
    };
    let shape = v.shape().to_vec();
    if shape.len() != 3 || shape[0] != 1 {
        return Err(err(format!("expected [1, seq, vocab], got {shape:?}")));
    }
    let (seq, vocab) = (shape[1] as usize, shape[2] as usize);
    if seq == 0 || vocab == 0 {
        return Err(err(format!("empty logits {shape:?}")));
    }
    let start = if all { 0 } else { (seq - 1) * vocab };
    let end = seq * vocab;
    out.clear();
    match ty {
        FloatType::F32 => {
            let (_, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| err(e.to_string()))?;
            out.extend_from_slice(&data[start..end]);
        }
        FloatType::F16 => {
            let (_, data) = v
                .try_extract_tensor::<half::f16>()
                .map_err(|e| err(e.to_string()))?;
            out.extend(data[start..end].iter().map(|x| x.to_f32()));
        }
        FloatType::Bf16 => {
            let (_, data) = v
                .try_extract_tensor::<half::bf16>()
                .map_err(|e| err(e.to_string()))?;
            out.extend(data[start..end].iter().map(|x| x.to_f32()));
        }
    }
    Ok(())
}

/// Suppresses eos ids until the sequence reaches `min_length` (ORT-GenAI's ApplyMinLength).
fn apply_min_length(logits: &mut [f32], seq_len: usize, min_length: usize, eos: &[u32]) {
    if seq_len < min_length {
        for &e in eos {
            if let Some(l) = logits.get_mut(e as usize) {
                *l = f32::MIN;
            }
        }
    }
}

/// What one generation runs under: its settings and the limits worked out from the bundle.
struct Run<'a> {
    params: &'a GenerateParams,
    cancel: &'a CancelToken,
    /// Set by the deadline watcher (or the loop) when time ran out.
    deadline_hit: &'a AtomicBool,
    extra_providers: &'a [ProviderReport],
    /// Total tokens the sequence may reach: `max_length`, or less with `max_new_tokens`.
    capacity: usize,
    /// `max_length` bounded by the model's context.
    max_length: usize,
    eos: Vec<u32>,
}

impl Run<'_> {
    /// component → provider that actually ran it.
    fn providers(&self, decoder: &Decoder) -> BTreeMap<String, String> {
        let mut providers = BTreeMap::new();
        for r in self
            .extra_providers
            .iter()
            .chain(std::iter::once(&decoder.report))
        {
            providers.insert(r.component.clone(), r.actual().to_string());
        }
        providers
    }
}

/// Runs a whole generation. `embedder` turns generated ids into embeddings when the decoder takes
/// `inputs_embeds`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    decoder: &mut Decoder,
    bundle: &Bundle,
    prompt: PromptInput,
    mut embedder: Option<&mut dyn Embedder>,
    params: &GenerateParams,
    cancel: &CancelToken,
    extra_providers: &[ProviderReport],
    on_event: &mut dyn FnMut(Event),
) -> Result<Done, GenerateError> {
    let start = params.started.unwrap_or_else(Instant::now);
    params
        .sampling
        .validate()
        .map_err(|e| GenerateError::Params(e.to_string()))?;
    let prompt_len = prompt.ids().len();
    if prompt_len == 0 {
        return Err(GenerateError::EmptyPrompt);
    }
    let max_length = params
        .max_length
        .min(bundle.config.model.context_length as usize)
        .max(1);
    if prompt_len >= max_length {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt_len,
            max: max_length,
        });
    }
    let capacity = match params.max_new_tokens {
        Some(n) => (prompt_len + n).min(max_length),
        None => max_length,
    };

    // The hard deadline: a watcher terminates the running step when time is up.
    let deadline_hit = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watcher = params.deadline.map(|limit| {
        let term = decoder.terminator();
        let hit = Arc::clone(&deadline_hit);
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
                hit.store(true, Ordering::SeqCst);
                cancel.cancel();
                let _ = term.terminate();
            }
        })
    });
    let run = Run {
        params,
        cancel,
        deadline_hit: &deadline_hit,
        extra_providers,
        capacity,
        max_length: params
            .max_length
            .min(bundle.config.model.context_length as usize),
        eos: bundle.eos_ids(),
    };
    let stream = TextStream::new(
        bundle.tokenizer.decode_table(),
        params.stop_strings.clone(),
        params.splitter.clone(),
    );
    let constraint = match &params.response_format {
        Some(f) => {
            let vocab = Vocabulary::of_bundle(bundle)?;
            Some(Constraint::new(f, &vocab)?)
        }
        None => None,
    };
    let state = RequestState::new(start, prompt.ids(), stream, constraint);
    let result = run_loop(decoder, &run, prompt, &mut embedder, state, on_event);
    drop(done_tx);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let _ = decoder.run_options.unterminate();
    result
}

/// The prompt's positions whose KV depends on its ids alone: up to the first image or audio
/// placeholder (there the embeddings come from the media).
fn keyable(ids: &[u32]) -> usize {
    ids.iter()
        .position(|&t| {
            t == crate::media::processor::IMAGE_TOKEN_ID
                || t == crate::media::processor::AUDIO_TOKEN_ID
        })
        .unwrap_or(ids.len())
}

fn run_loop(
    decoder: &mut Decoder,
    run: &Run<'_>,
    prompt: PromptInput,
    embedder: &mut Option<&mut dyn Embedder>,
    mut st: RequestState,
    on_event: &mut dyn FnMut(Event),
) -> Result<Done, GenerateError> {
    let (params, eos, capacity) = (run.params, run.eos.as_slice(), run.capacity);
    // The watcher (started just before) terminates a step that runs past the deadline; between
    // steps the deadline is checked here too, so it holds even when the watcher thread has not
    // been scheduled yet (a busy machine, a deadline shorter than a step).
    let deadline_at = params.deadline.map(|limit| Instant::now() + limit);
    let prompt_len = prompt.ids().len();
    let mut kv = decoder.reset(capacity)?;
    let mut sampler = Sampler::new(params.sampling.clone());

    let was_terminated = |e: &GenerateError| {
        run.deadline_hit.load(Ordering::SeqCst) && matches!(e, GenerateError::Run { .. })
    };

    let mut step = 0usize;
    // A cached prefix, then the prefill of the rest (at least the last prompt token is run: its
    // logits give the first answer token).
    // At least two positions are left to prefill: ONNX Runtime's one-row kernels round
    // differently from its multi-row ones (model::exact), and a cold prefill is multi-row.
    st.reused = decoder.restore_prefix(
        &mut kv,
        &st.history[..keyable(&st.history).min(prompt_len.saturating_sub(2))],
    )?;
    let reused = st.reused;
    let prefilled = match &prompt {
        PromptInput::Ids(ids) => decoder.step(
            &mut kv,
            StepTokens::Ids(&ids[reused..]),
            reused,
            step,
            false,
        ),
        PromptInput::Embeds { embeds, .. } if reused > 0 => {
            let ty = match &decoder.io.token {
                TokenInput::Embeds { ty, .. } => *ty,
                TokenInput::Ids { .. } => FloatType::F32,
            };
            let rest = embeds_from(embeds, reused, ty)?;
            decoder.step(&mut kv, StepTokens::Embeds(&rest), reused, step, false)
        }
        PromptInput::Embeds { embeds, .. } => {
            decoder.step(&mut kv, StepTokens::Embeds(embeds), 0, step, false)
        }
    };
    match prefilled {
        Ok(_) => {}
        Err(e) if was_terminated(&e) => {
            decoder.keep(kv);
            return Ok(st.finish(StopReason::Deadline, run.providers(decoder), on_event));
        }
        Err(e) => return Err(e),
    }
    st.prefill = st.elapsed();
    // Positions in the KV cache that hold tokens of the sequence.
    let mut past = prompt_len;
    // Speculation needs every position's logits and a cache it can roll back: off for a moving
    // cache on a device.
    // Constrained requests do not speculate: drafts would need the grammar's mask at every
    // drafted position (and a rollback of the grammar with the cache).
    let spec = if st.constraint.is_some() || (decoder.kv_on_device && !decoder.share_buffer) {
        Speculation::OFF
    } else {
        params.speculation
    };
    // The drafted tokens fed after the last emitted one in the run just made.
    let mut fed: Vec<u32> = Vec::new();
    // The length of the n-gram match `fed` was drafted after.
    let mut fed_n = 0;
    // When the last decoder run started, and its rows.
    let mut last_run: Option<(Instant, usize)> = None;
    let stop = 'gen: loop {
        // Sample from the logits of the run just made: one row per fed token, each checked
        // against the draft it predicts; the first mismatch (or the row after the last draft)
        // gives the token that the next run starts from.
        let rows = fed.len() + 1;
        let vocab = decoder.logits_buf.len() / rows;
        let mut j = 0;
        loop {
            let row = &mut decoder.logits_buf[j * vocab..(j + 1) * vocab];
            apply_min_length(row, st.history.len(), params.min_length, eos);
            if let Some(c) = &mut st.constraint {
                c.apply(row)?;
            }
            let (id, accepted) = match fed.get(j) {
                Some(&d) => sampler.sample_draft(row, &st.history, d),
                None => (sampler.sample(row, &st.history), false),
            };
            let is_eos = eos.contains(&id);
            if let (Some(c), false) = (&mut st.constraint, is_eos) {
                c.commit(id)?;
            }
            let hit = st.token(id, is_eos, on_event)?;
            if is_eos {
                break 'gen StopReason::Eos;
            }
            if let Some(s) = hit {
                break 'gen StopReason::StopString(s);
            }
            if st.history.len() >= capacity {
                break 'gen if st.history.len() >= run.max_length {
                    StopReason::MaxLength
                } else {
                    StopReason::MaxNewTokens
                };
            }
            if deadline_at.is_some_and(|d| Instant::now() >= d) {
                run.deadline_hit.store(true, Ordering::SeqCst);
                break 'gen StopReason::Deadline;
            }
            if run.cancel.is_cancelled() {
                break 'gen if run.deadline_hit.load(Ordering::SeqCst) {
                    StopReason::Deadline
                } else {
                    StopReason::Cancelled
                };
            }
            if !accepted {
                break;
            }
            st.accepted_drafts += 1;
            j += 1;
        }
        if spec.tuned {
            decoder.tuner.record_draft(fed_n, fed.len(), j);
        }
        // The run's first token and its accepted drafts are in the cache now; the rest of the
        // drafts are rolled back.
        if st.runs > 0 {
            past += 1 + j;
            if j < fed.len() {
                decoder.truncate(&mut kv, past)?;
            }
        }
        let id = *st.history.last().expect("a token was just pushed");
        // The next run: the new token, then a draft of what may follow it (bounded by the
        // cache's capacity: the run writes history.len() + draft positions), as long as the
        // tuner finds worth verifying.
        fed_n = speculate::draft(
            &st.history,
            &spec,
            capacity.saturating_sub(st.history.len()),
            &mut fed,
        );
        if spec.tuned {
            fed.truncate(decoder.tuner.length(fed_n, fed.len(), spec.max_draft));
        }
        step += 1;
        st.runs += 1;
        let mut ids = Vec::with_capacity(1 + fed.len());
        ids.push(id);
        ids.extend_from_slice(&fed);
        let all_rows = !fed.is_empty();
        // The tuner times whole iterations — the run, sampling its rows, emitting the tokens,
        // drafting the next — by the number of rows: what a row really costs.
        let now = Instant::now();
        if let Some((t, rows)) = last_run.replace((now, ids.len())) {
            if spec.is_on() && spec.tuned {
                decoder
                    .tuner
                    .record_run(rows, now.duration_since(t).as_secs_f64() * 1e6);
            }
        }
        let r = match embedder {
            Some(emb) => {
                let e = emb.embed(&ids)?;
                decoder.step(&mut kv, StepTokens::Embeds(&e), past, step, all_rows)
            }
            None => decoder.step(&mut kv, StepTokens::Ids(&ids), past, step, all_rows),
        };
        match r {
            Ok(_) => {}
            Err(e) if was_terminated(&e) => break 'gen StopReason::Deadline,
            Err(e) => return Err(e),
        }
    };
    // Flush what the stream held back, then the last sentence.
    st.flush(&stop, on_event)?;
    let keep_len = past.min(keyable(&st.history));
    let kept: Vec<u32> = st.history[..keep_len].to_vec();
    let done = st.finish(stop, run.providers(decoder), on_event);
    // After `Done` (the answer's wait is over): the sequence so far for the next prompt that
    // starts the same way — a follow-up question, the same system prompt or camera text.
    if let Err(e) = super::exact::keep_prefix(decoder, &mut kv, embedder, &kept, prompt_len) {
        log::warn!("keeping the prefix for the next prompt: {e}");
    }
    decoder.keep(kv);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_length_suppresses_eos() {
        let mut l = vec![0.0, 5.0, 1.0];
        apply_min_length(&mut l, 3, 5, &[1]);
        assert_eq!(l[1], f32::MIN);
        let mut l = vec![0.0, 5.0, 1.0];
        apply_min_length(&mut l, 5, 5, &[1]);
        assert_eq!(l[1], 5.0);
    }
}
