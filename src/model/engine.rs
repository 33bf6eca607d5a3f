//! The engine: a loaded bundle and its sessions, ready to answer.
//!
//! One [`Engine`] owns every ONNX session of a bundle (runs take `&mut`, so one owner — the model
//! worker thread in the daemon, the command itself in `gemba ask`). It turns a question into the
//! decoder's first input — token ids through the chat template for a text bundle; for phi4mm the
//! chat template, the processor and the vision / speech / embedding sessions — and streams a
//! generation through `generate`.
//!
//! Camera frames are named in the prompt the way the demo model and interleaved reports expect:
//! `Camera press-2: <|image_1|>` per frame, then the question (or `<|audio_1|>` for a spoken one),
//! so the model can cite a frame as `[cam:press-2]`.

use std::path::Path;

use super::bundle::{Bundle, BundleError};
use super::exact::{self, Exactness, Switch};
use super::generate::{
    generate, CancelToken, Decoder, Done, Event, GenerateError, GenerateParams, PromptInput,
};
use super::multimodal::Multimodal;
use super::providers::{ProviderPolicy, ProviderReport};
use super::runtime::Runtime;
use super::tokenizer::{ChatMessage, TokenizerError};
use crate::media::processor::{AudioSource, ImageSource};
use crate::media::speech::Pcm;

pub struct Engine {
    pub bundle: Bundle,
    pub decoder: Decoder,
    /// The phi4mm front end, for multimodal bundles.
    pub multimodal: Option<Multimodal>,
    /// Which speed-ups are exact here (measured on first use: [`Engine::exactness`]).
    exactness: Option<Exactness>,
}

/// What the engine is asked: the text, and the frames and clips shown with it. The model's own
/// input type (borrowed, no copies): callers convert their capture types to it (the daemon in
/// `daemon::prompt`), so `model` never depends on capture.
#[derive(Debug, Clone, Default)]
pub struct Prompt<'a> {
    pub text: &'a str,
    pub images: Vec<PromptImage<'a>>,
    pub audio: Vec<PromptAudio<'a>>,
}

/// One decoded picture: `height` rows of `width` RGB8 pixels, named in the prompt by `camera`
/// (`Camera press-2: <|image_1|>`).
#[derive(Debug, Clone, Copy)]
pub struct PromptImage<'a> {
    pub camera: &'a str,
    pub width: u32,
    pub height: u32,
    pub rgb: &'a [u8],
}

/// One mono clip, samples in [-1, 1]; `source` labels errors.
#[derive(Debug, Clone, Copy)]
pub struct PromptAudio<'a> {
    pub source: &'a str,
    pub sample_rate: u32,
    pub samples: &'a [f32],
}

/// Media given as files (the command line): decoded by the pre-processing itself, as ORT-GenAI
/// decodes them.
#[derive(Debug, Clone, Default)]
pub struct MediaFiles {
    pub images: Vec<std::path::PathBuf>,
    pub audio: Vec<std::path::PathBuf>,
}

impl Engine {
    /// Opens and checks the bundle at `dir`, then builds its sessions on the planned providers.
    pub fn load(rt: &Runtime, dir: &Path, policy: &ProviderPolicy) -> Result<Engine, BundleError> {
        let bundle = Bundle::open(dir)?;
        let multimodal = if super::genai_config::MULTIMODAL_TYPES
            .contains(&bundle.config.model.model_type.as_str())
        {
            Some(Multimodal::load(rt, &bundle, policy)?)
        } else {
            None
        };
        let decoder = Decoder::load(rt, &bundle, policy)?;
        // The weights are in memory now: onto huge pages with them (sys::hugepages).
        match crate::sys::hugepages::collapse_resident() {
            Ok(c) => log::info!("{}: {}", bundle.id(), c.summary()),
            Err(why) => log::debug!("{}: weights on normal pages: {why}", bundle.id()),
        }
        let engine = Engine {
            bundle,
            decoder,
            multimodal,
            exactness: None,
        };
        for r in engine.provider_reports() {
            log::info!("{}", r.summary());
        }
        Ok(engine)
    }

    /// Whether speculation and prefix reuse keep greedy output exact on this bundle: probed
    /// once (a few decoder runs), then remembered; what is off is logged with its reason.
    pub fn exactness(&mut self) -> &Exactness {
        if self.exactness.is_none() {
            // Unknown: small ids, valid in any vocabulary.
            let vocab = self.bundle.config.model.vocab_size.unwrap_or(256).max(16) as usize;
            let embedder: Option<&mut dyn super::generate::Embedder> = self
                .multimodal
                .as_mut()
                .map(|m| &mut m.embedding as &mut dyn super::generate::Embedder);
            let e = exact::probe(&mut self.decoder, embedder, vocab).unwrap_or_else(|e| {
                let why = format!("the exactness probe failed: {e}");
                Exactness {
                    speculation: Err(why.clone()),
                    prefix_reuse: Err(why),
                }
            });
            for line in e.lines() {
                log::info!("{}: {line}", self.bundle.id());
            }
            self.exactness = Some(e);
        }
        self.exactness.as_ref().expect("set above")
    }

    /// Applies `[model] speculate` / `--speculate` and `[model] prefix_cache` (`None`: auto) to
    /// `params` and the decoder's prefix cache; `auto` follows [`Engine::exactness`].
    pub fn apply_speedups(
        &mut self,
        params: &mut GenerateParams,
        speculate: Switch,
        prefix_bytes: Option<usize>,
        prefix_ttl: std::time::Duration,
    ) {
        let needs_probe = speculate == Switch::Auto || prefix_bytes.is_none();
        let e = if needs_probe {
            self.exactness().clone()
        } else {
            Exactness {
                speculation: Ok(exact::Agreement::Exact),
                prefix_reuse: Ok(()),
            }
        };
        params.speculation = exact::speculation(speculate, &e);
        let limits = exact::prefix_limits(prefix_bytes, prefix_ttl, &e);
        if self.decoder.prefix.limits != limits {
            self.decoder.prefix.set_limits(limits);
        }
    }

    /// Every component's provider report.
    pub fn provider_reports(&self) -> Vec<ProviderReport> {
        let mut v = self
            .multimodal
            .as_ref()
            .map(|m| m.reports())
            .unwrap_or_default();
        v.push(self.decoder.report.clone());
        v
    }

    /// Whether the bundle takes images / audio.
    pub fn sees(&self) -> bool {
        self.multimodal.as_ref().is_some_and(|m| m.vision.is_some())
    }
    pub fn hears(&self) -> bool {
        self.multimodal.as_ref().is_some_and(|m| m.speech.is_some())
    }

    /// The user turn for camera frames and audio: `Camera NAME: <|image_k|>` lines, the question,
    /// `<|audio_k|>` for each clip.
    pub fn user_content(text: &str, cameras: &[&str], audio_clips: usize) -> String {
        let mut parts: Vec<String> = cameras
            .iter()
            .enumerate()
            .map(|(i, c)| format!("Camera {c}: <|image_{}|>", i + 1))
            .collect();
        if !text.trim().is_empty() {
            parts.push(text.trim().to_string());
        }
        for k in 1..=audio_clips {
            parts.push(format!("<|audio_{k}|>"));
        }
        parts.join("\n")
    }

    pub(crate) fn render(
        &self,
        content: &str,
        system: Option<&str>,
        raw: bool,
    ) -> Result<String, GenerateError> {
        if raw {
            return Ok(content.to_string());
        }
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.into(),
            });
        }
        messages.push(ChatMessage::user(content));
        self.bundle
            .tokenizer
            .apply_chat_template(&messages, true)
            .map_err(|e| GenerateError::Prompt(e.to_string()))
    }

    /// Runs a multimodal prompt (already rendered) with its media.
    fn generate_multimodal(
        &mut self,
        rendered: &str,
        images: &[ImageSource<'_>],
        audio: &[AudioSource<'_>],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        // Timings count from here: pre-processing and the encoders are part of the answer's wait.
        let mut params = params.clone();
        params.started.get_or_insert_with(std::time::Instant::now);
        let params = &params;
        let mm = self.multimodal.as_mut().expect("checked by the caller");
        let p = mm.prompt(rendered, images, audio)?;
        let adapter = mm.adapter_for(p.images, p.audios);
        self.decoder.set_adapter(adapter)?;
        let reports = mm.reports();
        let prompt = PromptInput::Embeds {
            ids: p.ids,
            embeds: p.embeds,
        };
        generate(
            &mut self.decoder,
            &self.bundle,
            prompt,
            Some(&mut mm.embedding),
            params,
            cancel,
            &reports,
            on_event,
        )
    }

    /// `gemba ask`: a prompt with media from files. Placeholders in the prompt are kept as the
    /// user wrote them; without any, the processor puts them before the text.
    // The per-request state struct of issue 11 (item 5) will carry these; until then, one call.
    #[allow(clippy::too_many_arguments)]
    pub fn ask_files(
        &mut self,
        prompt: &str,
        system: Option<&str>,
        raw: bool,
        media: &MediaFiles,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        if self.multimodal.is_none() {
            if !media.images.is_empty() || !media.audio.is_empty() {
                return Err(GenerateError::Prompt(format!(
                    "{} is a text model (type {}); it cannot take images or audio",
                    self.bundle.id(),
                    self.bundle.config.model.model_type
                )));
            }
            let ids = self
                .prompt_ids(prompt, system, raw)
                .map_err(|e| GenerateError::Prompt(e.to_string()))?;
            return self.generate_ids(ids, params, cancel, on_event);
        }
        let rendered = self.render(prompt, system, raw)?;
        let images: Vec<ImageSource<'_>> =
            media.images.iter().map(|p| ImageSource::File(p)).collect();
        let audio: Vec<AudioSource<'_>> =
            media.audio.iter().map(|p| AudioSource::File(p)).collect();
        self.generate_multimodal(&rendered, &images, &audio, params, cancel, on_event)
    }

    /// Token ids for a user prompt: through the chat template unless `raw`.
    pub fn prompt_ids(
        &self,
        prompt: &str,
        system: Option<&str>,
        raw: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.into(),
            });
        }
        messages.push(ChatMessage::user(prompt));
        self.bundle.tokenizer.prompt_ids(&messages, raw)
    }

    /// The bundle's search defaults.
    pub fn default_params(&self) -> GenerateParams {
        GenerateParams::from_bundle(&self.bundle)
    }

    /// Answers a question: the text, and — for bundles that can see and hear — its frames and
    /// audio. A text-only bundle answers from the text alone (its provider report says so).
    pub fn ask<'a>(
        &mut self,
        input: impl Into<Prompt<'a>>,
        system: Option<&str>,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        let input: Prompt<'a> = input.into();
        if self.multimodal.is_none() {
            if !input.images.is_empty() || !input.audio.is_empty() {
                log::debug!(
                    "{}: a text model; {} frame(s) and {} clip(s) are not shown to it",
                    self.bundle.id(),
                    input.images.len(),
                    input.audio.len()
                );
            }
            let ids = self
                .prompt_ids(input.text, system, false)
                .map_err(|e| GenerateError::Prompt(e.to_string()))?;
            return self.generate_ids(ids, params, cancel, on_event);
        }
        // What this bundle cannot take is left out of the prompt rather than failing the query.
        let frames: Vec<&PromptImage<'_>> = if self.sees() {
            input.images.iter().collect()
        } else {
            Vec::new()
        };
        let clips: Vec<&PromptAudio<'_>> = if self.hears() {
            input.audio.iter().collect()
        } else {
            Vec::new()
        };
        let cameras: Vec<&str> = frames.iter().map(|f| f.camera).collect();
        let content = Self::user_content(input.text, &cameras, clips.len());
        let rendered = self.render(&content, system, false)?;
        let pcms: Vec<Pcm> = clips
            .iter()
            .map(|c| Pcm {
                samples: c.samples.to_vec(),
                sample_rate: c.sample_rate,
                channels: 1,
            })
            .collect();
        let images: Vec<ImageSource<'_>> = frames
            .iter()
            .map(|f| ImageSource::Rgb {
                width: f.width as usize,
                height: f.height as usize,
                data: f.rgb,
                name: f.camera,
            })
            .collect();
        let audio: Vec<AudioSource<'_>> = pcms
            .iter()
            .zip(&clips)
            .map(|(p, c)| AudioSource::Pcm {
                pcm: p,
                name: c.source,
            })
            .collect();
        self.generate_multimodal(&rendered, &images, &audio, params, cancel, on_event)
    }

    /// Generates from token ids, streaming events to `on_event`. For a multimodal bundle the ids
    /// go through the embedding session (text only: empty image and audio features).
    pub fn generate_ids(
        &mut self,
        ids: Vec<u32>,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        match &mut self.multimodal {
            None => generate(
                &mut self.decoder,
                &self.bundle,
                PromptInput::Ids(ids),
                None,
                params,
                cancel,
                &[],
                on_event,
            ),
            Some(mm) => {
                use super::generate::Embedder;
                let embeds = mm.embedding.embed(&ids)?;
                self.decoder.set_adapter(None)?;
                let reports = mm.reports();
                generate(
                    &mut self.decoder,
                    &self.bundle,
                    PromptInput::Embeds { ids, embeds },
                    Some(&mut mm.embedding),
                    params,
                    cancel,
                    &reports,
                    on_event,
                )
            }
        }
    }
}
