//! phi4mm: the vision, speech and embedding sessions around the decoder.
//!
//! The prompt stage runs in ORT-GenAI's order (`multi_modal.cpp`): the processor expands the
//! prompt and makes the tensors; vision turns `pixel_values` (+ mask, sizes) into
//! `image_features` when there are images; speech turns `audio_embeds` (+ mask, sizes, projection
//! mode) into `audio_features` when there is audio, reshaped from `[B, T, H]` to `[B·T, H]`;
//! embedding merges `input_ids` with both (an empty `[0, H]` stands in for missing features) into
//! `inputs_embeds` for the decoder. Each generated token then runs embedding → decoder only.
//!
//! Inputs are fed by name where the component's graph has them, in the element types the graph
//! declares (fp32 / fp16 / bf16). A bundle's LoRA adapters (`vision.adapter_filename`,
//! `speech.adapter_filename`) are applied to the decoder as ORT-GenAI applies them: the vision
//! adapter when the prompt has images, otherwise the speech adapter when it has audio.

use std::collections::HashMap;

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::bundle::{Bundle, BundleError};
use super::generate::{Embedder, GenerateError};
use super::providers::{build_session, ProviderPolicy, ProviderReport};
use super::runtime::Runtime;
use crate::media::processor::{AudioSource, ImageSource, InputDtypes, Phi4mmProcessor};
use crate::media::tensor::{FloatDtype, HostTensor, TensorData};

/// One auxiliary session and what its graph takes.
pub struct Component {
    pub session: Session,
    pub report: ProviderReport,
    inputs: HashMap<String, (TensorElementType, Vec<i64>)>,
    output: String,
}

impl Component {
    fn load(
        rt: &Runtime,
        bundle: &Bundle,
        name: &str,
        file: &str,
        session_options: Option<&super::genai_config::SessionOptions>,
        output: &str,
        policy: &ProviderPolicy,
    ) -> Result<Component, BundleError> {
        let path = bundle.file(file);
        // Components without session options inherit the decoder's, as in ORT-GenAI.
        let opts = session_options
            .cloned()
            .unwrap_or_else(|| bundle.config.decoder_session_options());
        let (session, report) =
            build_session(rt, name, &path, &opts, &format!("model.{name}"), policy)?;
        let inputs = session
            .inputs()
            .iter()
            .filter_map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    Some((o.name().to_string(), (*ty, shape.to_vec())))
                }
                _ => None,
            })
            .collect();
        if !session.outputs().iter().any(|o| o.name() == output) {
            let have: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
            return Err(BundleError::Graph {
                file: path,
                msg: format!(
                    "output \"{output}\" (model.{name}.outputs) is not in the graph; it has {}",
                    have.join(", ")
                ),
            });
        }
        Ok(Component {
            session,
            report,
            inputs,
            output: output.to_string(),
        })
    }

    /// The fixed size of input `name`'s first (batch) dimension, if the graph fixes it.
    pub(crate) fn fixed_batch(&self, name: &str) -> Option<i64> {
        self.inputs
            .get(name)
            .and_then(|(_, shape)| shape.first().copied())
            .filter(|&d| d > 0)
    }

    fn float_dtype(&self, name: &str) -> FloatDtype {
        match self.inputs.get(name).map(|(t, _)| *t) {
            Some(TensorElementType::Float16) => FloatDtype::F16,
            Some(TensorElementType::Bfloat16) => FloatDtype::BF16,
            _ => FloatDtype::F32,
        }
    }

    /// Runs with every given tensor the graph takes; returns the configured output.
    pub(crate) fn run(&mut self, tensors: &[(&str, DynValue)]) -> Result<DynValue, GenerateError> {
        let name = self.report.component.clone();
        let err = |reason: String| GenerateError::Run {
            step: 0,
            reason: format!("{name}: {reason}"),
        };
        let mut feed: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for (n, v) in tensors {
            if self.inputs.contains_key(*n) {
                feed.push((n.to_string(), v.view().into()));
            }
        }
        for n in self.inputs.keys() {
            if !feed.iter().any(|(f, _)| f == n) {
                return Err(err(format!("graph input \"{n}\" has nothing to feed it")));
            }
        }
        let mut out = self.session.run(feed).map_err(|e| err(e.to_string()))?;
        out.remove(self.output.as_str())
            .ok_or_else(|| err(format!("no output \"{}\"", self.output)))
    }
}

/// A host tensor as an ONNX Runtime value (the data is copied once into the value).
pub fn to_value(t: &HostTensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match &t.data {
        TensorData::F32(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::F16(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::BF16(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I64(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I32(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bool(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

/// An empty `[0, hidden]` features tensor of the embedding's declared type.
fn empty_features(ty: TensorElementType, hidden: usize) -> ort::Result<DynValue> {
    let shape = [0i64, hidden as i64];
    Ok(match ty {
        TensorElementType::Float16 => {
            Tensor::<half::f16>::from_array((shape, Vec::new()))?.into_dyn()
        }
        TensorElementType::Bfloat16 => {
            Tensor::<half::bf16>::from_array((shape, Vec::new()))?.into_dyn()
        }
        _ => Tensor::<f32>::from_array((shape, Vec::new()))?.into_dyn(),
    })
}

/// The embedding session, for the prompt and for each generated token.
pub struct EmbeddingStage {
    component: Component,
    input_ids: String,
    image_features: String,
    audio_features: String,
    hidden: usize,
}

impl EmbeddingStage {
    fn features_type(&self, name: &str) -> TensorElementType {
        self.component
            .inputs
            .get(name)
            .map(|(t, _)| *t)
            .unwrap_or(TensorElementType::Float32)
    }

    pub(crate) fn run(
        &mut self,
        ids: &[i64],
        image: Option<DynValue>,
        audio: Option<DynValue>,
    ) -> Result<DynValue, GenerateError> {
        let e = |x: ort::Error| GenerateError::Run {
            step: 0,
            reason: format!("embedding: {x}"),
        };
        let ids_v = Tensor::from_array(([1i64, ids.len() as i64], ids.to_vec()))
            .map_err(e)?
            .into_dyn();
        let image = match image {
            Some(v) => v,
            None => {
                empty_features(self.features_type(&self.image_features), self.hidden).map_err(e)?
            }
        };
        let audio = match audio {
            Some(v) => v,
            None => {
                empty_features(self.features_type(&self.audio_features), self.hidden).map_err(e)?
            }
        };
        let (a, b, c) = (
            self.input_ids.clone(),
            self.image_features.clone(),
            self.audio_features.clone(),
        );
        self.component.run(&[
            (a.as_str(), ids_v),
            (b.as_str(), image),
            (c.as_str(), audio),
        ])
    }
}

impl Embedder for EmbeddingStage {
    fn embed(&mut self, ids: &[u32]) -> Result<DynValue, GenerateError> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        self.run(&ids, None, None)
    }
}

/// The loaded phi4mm front end.
pub struct Multimodal {
    pub processor: Phi4mmProcessor,
    pub vision: Option<Component>,
    pub speech: Option<Component>,
    pub embedding: EmbeddingStage,
    vision_adapter: Option<ort::session::Adapter>,
    speech_adapter: Option<ort::session::Adapter>,
    /// The vision encoder's output for the last images it encoded, keyed by a hash of its
    /// inputs: an alert look asks each of a camera's rules on the same frame, and the frame is
    /// encoded once (the questions differ only in text). One entry; a host copy.
    vision_cache: Option<(u128, HostTensor)>,
    /// Vision encoder runs, and prompts that reused the cached features instead.
    pub vision_runs: u64,
    pub vision_reused: u64,
}

/// A hash of the tensors `c` takes (names, shapes, contents): equal for the same images.
/// XXH3-128 over their bytes as they lie in memory (the key never leaves the process).
fn inputs_key(c: &Component, tensors: &[(&str, HostTensor)]) -> u128 {
    use bytemuck::cast_slice;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (n, t) in tensors.iter().filter(|(n, _)| c.inputs.contains_key(*n)) {
        h.update(n.as_bytes());
        h.update(&[0xff]);
        for d in &t.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        let bools: Vec<u8>;
        let (tag, bytes): (&[u8], &[u8]) = match &t.data {
            TensorData::F32(v) => (b"f32", cast_slice(v)),
            TensorData::F16(v) => (b"f16", cast_slice(v)),
            TensorData::BF16(v) => (b"bf16", cast_slice(v)),
            TensorData::I64(v) => (b"i64", cast_slice(v)),
            TensorData::I32(v) => (b"i32", cast_slice(v)),
            TensorData::Bool(v) => {
                bools = v.iter().map(|&b| u8::from(b)).collect();
                (b"bool", &bools)
            }
        };
        h.update(tag);
        h.update(bytes);
    }
    h.digest128()
}

/// A host copy of a float output (`None` where it cannot be read on the host).
fn to_host(v: &DynValue) -> Option<HostTensor> {
    let shape = |s: &[i64]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
    if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
        return Some(HostTensor {
            shape: shape(s),
            data: TensorData::F32(d.to_vec()),
        });
    }
    if let Ok((s, d)) = v.try_extract_tensor::<half::f16>() {
        return Some(HostTensor {
            shape: shape(s),
            data: TensorData::F16(d.to_vec()),
        });
    }
    if let Ok((s, d)) = v.try_extract_tensor::<half::bf16>() {
        return Some(HostTensor {
            shape: shape(s),
            data: TensorData::BF16(d.to_vec()),
        });
    }
    None
}

/// What the prompt stage produced.
pub struct PromptEmbeds {
    pub ids: Vec<u32>,
    pub embeds: DynValue,
    pub images: usize,
    pub audios: usize,
}

impl Multimodal {
    pub fn load(
        rt: &Runtime,
        bundle: &Bundle,
        policy: &ProviderPolicy,
    ) -> Result<Multimodal, BundleError> {
        let m = &bundle.config.model;
        let processor = super::preprocess::processor(bundle).map_err(|e| BundleError::Graph {
            file: bundle.dir.join("genai_config.json"),
            msg: format!("processor: {e}"),
        })?;
        let vision = match &m.vision {
            Some(v) if !v.filename.is_empty() => Some(Component::load(
                rt,
                bundle,
                "vision",
                &v.filename,
                v.session_options.as_ref(),
                &v.outputs.image_features,
                policy,
            )?),
            _ => None,
        };
        let speech = match &m.speech {
            Some(s) if !s.filename.is_empty() => Some(Component::load(
                rt,
                bundle,
                "speech",
                &s.filename,
                s.session_options.as_ref(),
                &s.outputs.audio_features,
                policy,
            )?),
            _ => None,
        };
        let e = m
            .embedding
            .as_ref()
            .expect("checked by the config parser for multimodal types");
        let component = Component::load(
            rt,
            bundle,
            "embedding",
            &e.filename,
            e.session_options.as_ref(),
            &e.outputs.inputs_embeds,
            policy,
        )?;
        let hidden = component
            .inputs
            .get(&e.inputs.image_features)
            .or_else(|| component.inputs.get(&e.inputs.audio_features))
            .and_then(|(_, s)| s.last().copied())
            .filter(|&h| h > 0)
            .map(|h| h as usize)
            .unwrap_or(m.decoder.hidden_size as usize);
        let load_adapter =
            |name: Option<&String>| -> Result<Option<ort::session::Adapter>, BundleError> {
                match name {
                    Some(f) if !f.is_empty() => {
                        let path = bundle.file(f);
                        ort::session::Adapter::from_file(&path, None)
                            .map(Some)
                            .map_err(|err| BundleError::Graph {
                                file: path,
                                msg: format!("cannot load the LoRA adapter: {err}"),
                            })
                    }
                    _ => Ok(None),
                }
            };
        let vision_adapter =
            load_adapter(m.vision.as_ref().and_then(|v| v.adapter_filename.as_ref()))?;
        let speech_adapter =
            load_adapter(m.speech.as_ref().and_then(|s| s.adapter_filename.as_ref()))?;
        Ok(Multimodal {
            processor,
            vision,
            speech,
            embedding: EmbeddingStage {
                component,
                input_ids: e.inputs.input_ids.clone(),
                image_features: e.inputs.image_features.clone(),
                audio_features: e.inputs.audio_features.clone(),
                hidden,
            },
            vision_adapter,
            speech_adapter,
            vision_cache: None,
            vision_runs: 0,
            vision_reused: 0,
        })
    }

    pub fn reports(&self) -> Vec<ProviderReport> {
        let mut v = Vec::new();
        if let Some(c) = &self.vision {
            v.push(c.report.clone());
        }
        if let Some(c) = &self.speech {
            v.push(c.report.clone());
        }
        v.push(self.embedding.component.report.clone());
        v
    }

    /// The decoder adapter this prompt calls for, if the bundle has one.
    pub fn adapter_for(&self, images: usize, audios: usize) -> Option<&ort::session::Adapter> {
        if images > 0 && self.vision_adapter.is_some() {
            self.vision_adapter.as_ref()
        } else if audios > 0 {
            self.speech_adapter.as_ref()
        } else {
            None
        }
    }

    /// The dtypes the vision/speech sessions declare for their float inputs.
    pub(crate) fn dtypes(&self) -> InputDtypes {
        InputDtypes {
            pixel_values: self
                .vision
                .as_ref()
                .map(|c| c.float_dtype("pixel_values"))
                .unwrap_or_default(),
            image_attention_mask: self
                .vision
                .as_ref()
                .map(|c| c.float_dtype("image_attention_mask"))
                .unwrap_or_default(),
            audio_embeds: self
                .speech
                .as_ref()
                .map(|c| c.float_dtype("audio_embeds"))
                .unwrap_or_default(),
        }
    }

    /// Pre-processes `prompt` (already through the chat template) with its media and runs the
    /// prompt stage: vision, speech, embedding.
    pub fn prompt(
        &mut self,
        prompt: &str,
        images: &[ImageSource<'_>],
        audios: &[AudioSource<'_>],
    ) -> Result<PromptEmbeds, GenerateError> {
        if !images.is_empty() && self.vision.is_none() {
            return Err(GenerateError::Prompt(
                "this bundle has no vision component; it cannot take images".into(),
            ));
        }
        if !audios.is_empty() && self.speech.is_none() {
            return Err(GenerateError::Prompt(
                "this bundle has no speech component; it cannot take audio".into(),
            ));
        }
        let processed = self
            .processor
            .process(prompt, images, audios)
            .map_err(|e| GenerateError::Prompt(e.to_string()))?;
        let tensors = processed.tensors(self.dtypes());
        let values: Vec<(&str, DynValue)> = tensors
            .iter()
            .map(|(n, t)| to_value(t).map(|v| (*n, v)))
            .collect::<ort::Result<_>>()
            .map_err(|e| GenerateError::Prompt(format!("tensors: {e}")))?;
        let n_images = processed.images.as_ref().map(|b| b.images).unwrap_or(0);
        let n_audios = processed.audios.as_ref().map(|a| a.clips).unwrap_or(0);
        let image_features = match (&mut self.vision, n_images) {
            (Some(v), n) if n > 0 => {
                let key = inputs_key(v, &tensors);
                match &self.vision_cache {
                    Some((k, host)) if *k == key => {
                        self.vision_reused += 1;
                        Some(to_value(host).map_err(|e| {
                            GenerateError::Prompt(format!("cached image features: {e}"))
                        })?)
                    }
                    _ => {
                        let out = v.run(&values)?;
                        self.vision_runs += 1;
                        self.vision_cache = to_host(&out).map(|h| (key, h));
                        Some(out)
                    }
                }
            }
            _ => None,
        };
        let audio_features = match (&mut self.speech, n_audios) {
            (Some(s), n) if n > 0 => {
                let f = s.run(&values)?;
                Some(flatten_3d(f)?)
            }
            _ => None,
        };
        let embeds = self
            .embedding
            .run(&processed.input_ids, image_features, audio_features)?;
        Ok(PromptEmbeds {
            ids: processed.input_ids.iter().map(|&i| i as u32).collect(),
            embeds,
            images: n_images,
            audios: n_audios,
        })
    }
}

/// `[B, T, H]` → `[B·T, H]` (speech features for the embedding model).
fn flatten_3d(v: DynValue) -> Result<DynValue, GenerateError> {
    let shape = v.shape().to_vec();
    if shape.len() != 3 {
        return Ok(v);
    }
    let err = |e: ort::Error| GenerateError::Output {
        name: "audio_features".into(),
        reason: e.to_string(),
    };
    let new_shape = [shape[0] * shape[1], shape[2]];
    Ok(match v.dtype().tensor_type() {
        Some(TensorElementType::Float16) => {
            let (_, d) = v.try_extract_tensor::<half::f16>().map_err(err)?;
            Tensor::from_array((new_shape, d.to_vec()))
                .map_err(err)?
                .into_dyn()
        }
        Some(TensorElementType::Bfloat16) => {
            let (_, d) = v.try_extract_tensor::<half::bf16>().map_err(err)?;
            Tensor::from_array((new_shape, d.to_vec()))
                .map_err(err)?
                .into_dyn()
        }
        _ => {
            let (_, d) = v.try_extract_tensor::<f32>().map_err(err)?;
            Tensor::from_array((new_shape, d.to_vec()))
                .map_err(err)?
                .into_dyn()
        }
    })
}
