//! The engine: a loaded bundle and its sessions, ready to answer.
//!
//! One [`Engine`] owns every ONNX session of a bundle (runs take `&mut`, so one owner — the model
//! worker thread in the daemon, the command itself in `gemba ask`). It turns a prompt into token
//! ids (chat template unless raw) and streams a generation through `generate`.

use std::path::Path;

use super::bundle::{Bundle, BundleError};
use super::generate::{generate, CancelToken, Decoder, Done, Event, GenerateError, GenerateParams, PromptInput};
use super::providers::{ProviderPolicy, ProviderReport};
use super::runtime::Runtime;
use super::tokenizer::{ChatMessage, TokenizerError};

pub struct Engine {
    pub bundle: Bundle,
    pub decoder: Decoder,
}

impl Engine {
    /// Opens and checks the bundle at `dir`, then builds its sessions on the planned providers.
    pub fn load(rt: &Runtime, dir: &Path, policy: &ProviderPolicy) -> Result<Engine, BundleError> {
        let bundle = Bundle::open(dir)?;
        let decoder = Decoder::load(rt, &bundle, policy)?;
        log::info!("{}", decoder.report.summary());
        Ok(Engine { bundle, decoder })
    }

    /// Every component's provider report.
    pub fn provider_reports(&self) -> Vec<ProviderReport> {
        vec![self.decoder.report.clone()]
    }

    /// Token ids for a user prompt: through the chat template unless `raw`.
    pub fn prompt_ids(&self, prompt: &str, system: Option<&str>, raw: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage { role: "system".into(), content: s.into() });
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
    pub fn ask(
        &mut self,
        input: &super::worker::AskInput,
        system: Option<&str>,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        if !input.frames.is_empty() || !input.audio.is_empty() {
            log::debug!("{}: a text model; {} frame(s) and {} clip(s) are not shown to it", self.bundle.id(), input.frames.len(), input.audio.len());
        }
        let ids = self.prompt_ids(&input.text, system, false).map_err(|e| GenerateError::Prompt(e.to_string()))?;
        self.generate_ids(ids, params, cancel, on_event)
    }

    /// Generates from token ids, streaming events to `on_event`.
    pub fn generate_ids(
        &mut self,
        ids: Vec<u32>,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Done, GenerateError> {
        generate(&mut self.decoder, &self.bundle, PromptInput::Ids(ids), None, params, cancel, &[], on_event)
    }
}
