//! A model bundle on disk: `genai_config.json`, the ONNX files it names, the tokenizer — checked
//! before anything runs.
//!
//! [`Bundle::open`] parses the config strictly, checks that every file it names exists and that
//! the tokenizer loads. Once a session exists, [`DecoderIo::from_session`] checks the graph's real
//! inputs and outputs (names, dtypes, ranks) against the config and resolves how the decoder is
//! fed; any disagreement is reported with the file and the config key.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::genai_config::{layer_name, ConfigError, GenaiConfig};
use super::providers::ProviderError;
use super::tokenizer::{TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{dir}: not a directory; a bundle is a directory holding genai_config.json")]
    NotADirectory { dir: PathBuf },
    #[error("{path}: missing; a bundle needs genai_config.json")]
    NoConfig { path: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path} (named by {key}) does not exist")]
    MissingFile { path: PathBuf, key: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("{file}: {msg}")]
    Graph { file: PathBuf, msg: String },
}

/// A bundle whose files have been checked.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config: GenaiConfig,
    pub tokenizer: TextTokenizer,
}

impl Bundle {
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        if !dir.is_dir() {
            return Err(BundleError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        let cfg_path = dir.join("genai_config.json");
        if !cfg_path.is_file() {
            return Err(BundleError::NoConfig { path: cfg_path });
        }
        let config = GenaiConfig::load(&cfg_path)?;
        let m = &config.model;
        let mut files = vec![(m.decoder.filename.as_str(), "model.decoder.filename")];
        if let Some(e) = &m.embedding {
            files.push((e.filename.as_str(), "model.embedding.filename"));
        }
        if let Some(v) = &m.vision {
            files.push((v.filename.as_str(), "model.vision.filename"));
            files.push((v.config_filename.as_str(), "model.vision.config_filename"));
            if let Some(a) = &v.adapter_filename {
                files.push((a.as_str(), "model.vision.adapter_filename"));
            }
        }
        if let Some(s) = &m.speech {
            files.push((s.filename.as_str(), "model.speech.filename"));
            files.push((s.config_filename.as_str(), "model.speech.config_filename"));
            if let Some(a) = &s.adapter_filename {
                files.push((a.as_str(), "model.speech.adapter_filename"));
            }
        }
        for (name, key) in files {
            if name.is_empty() {
                continue;
            }
            let p = Path::new(name);
            if p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(BundleError::Config(ConfigError::Key {
                    path: cfg_path.clone(),
                    key: key.into(),
                    msg: format!("\"{name}\" must be a relative path inside the bundle"),
                }));
            }
            let path = dir.join(p);
            if !path.is_file() {
                return Err(BundleError::MissingFile {
                    path,
                    key: key.into(),
                });
            }
        }
        let tok_dir = match &m.tokenizer_dir {
            Some(t) if !t.is_empty() => dir.join(t),
            _ => dir.to_path_buf(),
        };
        let tokenizer = TextTokenizer::load(&tok_dir)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
        })
    }

    /// Path of a file named in the config.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A short name for the bundle: its directory name.
    pub fn id(&self) -> String {
        let canon = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into())
    }

    /// Eos ids as u32.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.config
            .model
            .eos_token_id
            .to_vec()
            .into_iter()
            .filter(|&i| i >= 0)
            .map(|i| i as u32)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntType {
    I32,
    I64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    fn from_ort(t: TensorElementType) -> Option<FloatType> {
        match t {
            TensorElementType::Float32 => Some(FloatType::F32),
            TensorElementType::Float16 => Some(FloatType::F16),
            TensorElementType::Bfloat16 => Some(FloatType::Bf16),
            _ => None,
        }
    }
    pub fn ort(self) -> TensorElementType {
        match self {
            FloatType::F32 => TensorElementType::Float32,
            FloatType::F16 => TensorElementType::Float16,
            FloatType::Bf16 => TensorElementType::Bfloat16,
        }
    }
}

impl IntType {
    fn from_ort(t: TensorElementType) -> Option<IntType> {
        match t {
            TensorElementType::Int32 => Some(IntType::I32),
            TensorElementType::Int64 => Some(IntType::I64),
            _ => None,
        }
    }
}

/// How the decoder takes its tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenInput {
    Ids {
        name: String,
        ty: IntType,
    },
    Embeds {
        name: String,
        ty: FloatType,
        hidden: usize,
    },
}

/// The decoder graph's inputs and outputs, checked against the config.
#[derive(Debug, Clone)]
pub struct DecoderIo {
    pub token: TokenInput,
    pub attention_mask: Option<(String, IntType)>,
    pub position_ids: Option<(String, IntType)>,
    pub past_key: Vec<String>,
    pub past_value: Vec<String>,
    pub present_key: Vec<String>,
    pub present_value: Vec<String>,
    pub kv_type: FloatType,
    pub logits: String,
    pub logits_type: FloatType,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_size: usize,
    /// Logits' last dimension when the graph fixes it.
    pub vocab: Option<usize>,
}

fn dtype_name(t: &ValueType) -> String {
    match t {
        ValueType::Tensor { ty, .. } => format!("{ty:?}").to_lowercase(),
        other => format!("{other:?}"),
    }
}

impl DecoderIo {
    /// Checks the decoder session's graph against `config`; `file` names the ONNX file in errors.
    pub fn from_session(
        session: &Session,
        config: &GenaiConfig,
        file: &Path,
    ) -> Result<DecoderIo, BundleError> {
        let d = &config.model.decoder;
        let gerr = |msg: String| BundleError::Graph {
            file: file.to_path_buf(),
            msg,
        };
        let inputs: Vec<(&str, &ValueType)> = session
            .inputs()
            .iter()
            .map(|o| (o.name(), o.dtype()))
            .collect();
        let outputs: Vec<(&str, &ValueType)> = session
            .outputs()
            .iter()
            .map(|o| (o.name(), o.dtype()))
            .collect();
        let find =
            |list: &[(&str, &ValueType)], name: &str| -> Option<(TensorElementType, Vec<i64>)> {
                list.iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, t)| match t {
                        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
                        _ => None,
                    })
            };
        let mut used: Vec<String> = Vec::new();

        let int_input =
            |name: &str, key: &str, rank: usize| -> Result<Option<IntType>, BundleError> {
                let Some((ty, shape)) = find(&inputs, name) else {
                    return Ok(None);
                };
                let it = IntType::from_ort(ty).ok_or_else(|| {
                    gerr(format!(
                        "input \"{name}\" ({key}) has dtype {ty:?}, expected int64 or int32"
                    ))
                })?;
                if shape.len() != rank {
                    return Err(gerr(format!(
                        "input \"{name}\" ({key}) has rank {}, expected {rank}",
                        shape.len()
                    )));
                }
                Ok(Some(it))
            };

        let ids_name = &d.inputs.input_ids;
        let emb_name = &d.inputs.inputs_embeds;
        let token = if let Some(ty) = int_input(ids_name, "model.decoder.inputs.input_ids", 2)? {
            used.push(ids_name.clone());
            TokenInput::Ids {
                name: ids_name.clone(),
                ty,
            }
        } else if let Some((ty, shape)) = find(&inputs, emb_name) {
            let ft = FloatType::from_ort(ty).ok_or_else(|| {
                gerr(format!("input \"{emb_name}\" (model.decoder.inputs.inputs_embeds) has dtype {ty:?}, expected a float type"))
            })?;
            if shape.len() != 3 {
                return Err(gerr(format!(
                    "input \"{emb_name}\" (model.decoder.inputs.inputs_embeds) has rank {}, expected 3 [batch, seq, hidden]",
                    shape.len()
                )));
            }
            used.push(emb_name.clone());
            TokenInput::Embeds {
                name: emb_name.clone(),
                ty: ft,
                hidden: d.hidden_size as usize,
            }
        } else {
            let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
            return Err(gerr(format!(
                "the graph has neither \"{ids_name}\" (model.decoder.inputs.input_ids) nor \"{emb_name}\" (model.decoder.inputs.inputs_embeds); its inputs are: {}",
                names.join(", ")
            )));
        };
        let attention_mask = int_input(
            &d.inputs.attention_mask,
            "model.decoder.inputs.attention_mask",
            2,
        )?
        .map(|t| (d.inputs.attention_mask.clone(), t));
        if let Some((n, _)) = &attention_mask {
            used.push(n.clone());
        }
        let position_ids = int_input(
            &d.inputs.position_ids,
            "model.decoder.inputs.position_ids",
            2,
        )?
        .map(|t| (d.inputs.position_ids.clone(), t));
        if let Some((n, _)) = &position_ids {
            used.push(n.clone());
        }
        if let (Some((_, a)), Some((_, p))) = (&attention_mask, &position_ids) {
            if a != p {
                return Err(gerr(
                    "attention_mask and position_ids must have the same integer type".into(),
                ));
            }
        }

        let layers = d.num_hidden_layers as usize;
        let mut kv_type: Option<FloatType> = None;
        let mut names = |template: &str,
                         key: &str,
                         list: &[(&str, &ValueType)],
                         kind: &str,
                         used: &mut Vec<String>| {
            let mut out = Vec::with_capacity(layers);
            for i in 0..layers {
                let name = layer_name(template, i);
                let (ty, shape) = find(list, &name).ok_or_else(|| {
                    gerr(format!(
                        "{kind} \"{name}\" ({key} for layer {i} of model.decoder.num_hidden_layers={layers}) is not in the graph"
                    ))
                })?;
                let ft = FloatType::from_ort(ty).ok_or_else(|| {
                    gerr(format!(
                        "{kind} \"{name}\" has dtype {ty:?}, expected a float type"
                    ))
                })?;
                if shape.len() != 4 {
                    return Err(gerr(format!(
                        "{kind} \"{name}\" has rank {}, expected 4 [batch, kv_heads, seq, head_size]",
                        shape.len()
                    )));
                }
                if shape[1] > 0 && shape[1] != d.num_key_value_heads as i64 {
                    return Err(gerr(format!(
                        "{kind} \"{name}\" has {} KV heads, model.decoder.num_key_value_heads says {}",
                        shape[1], d.num_key_value_heads
                    )));
                }
                if shape[3] > 0 && shape[3] != d.head_size as i64 {
                    return Err(gerr(format!(
                        "{kind} \"{name}\" has head size {}, model.decoder.head_size says {}",
                        shape[3], d.head_size
                    )));
                }
                match kv_type {
                    None => kv_type = Some(ft),
                    Some(k) if k != ft => {
                        return Err(gerr(format!(
                            "{kind} \"{name}\" has dtype {ft:?}, other KV tensors {k:?}"
                        )))
                    }
                    _ => {}
                }
                used.push(name.clone());
                out.push(name);
            }
            Ok::<Vec<String>, BundleError>(out)
        };
        let mut used_out: Vec<String> = Vec::new();
        let past_key = names(
            &d.inputs.past_key_names,
            "model.decoder.inputs.past_key_names",
            &inputs,
            "input",
            &mut used,
        )?;
        let past_value = names(
            &d.inputs.past_value_names,
            "model.decoder.inputs.past_value_names",
            &inputs,
            "input",
            &mut used,
        )?;
        let present_key = names(
            &d.outputs.present_key_names,
            "model.decoder.outputs.present_key_names",
            &outputs,
            "output",
            &mut used_out,
        )?;
        let present_value = names(
            &d.outputs.present_value_names,
            "model.decoder.outputs.present_value_names",
            &outputs,
            "output",
            &mut used_out,
        )?;

        let (lt, lshape) = find(&outputs, &d.outputs.logits).ok_or_else(|| {
            gerr(format!(
                "output \"{}\" (model.decoder.outputs.logits) is not in the graph",
                d.outputs.logits
            ))
        })?;
        let logits_type = FloatType::from_ort(lt).ok_or_else(|| {
            gerr(format!("output \"{}\" (model.decoder.outputs.logits) has dtype {lt:?}, expected a float type", d.outputs.logits))
        })?;
        if lshape.len() != 3 {
            return Err(gerr(format!(
                "output \"{}\" has rank {}, expected 3 [batch, seq, vocab]",
                d.outputs.logits,
                lshape.len()
            )));
        }
        used_out.push(d.outputs.logits.clone());

        for (name, t) in &inputs {
            if !used.iter().any(|u| u == name) {
                return Err(gerr(format!(
                    "graph input \"{name}\" ({}) is not one genai_config.json's model.decoder.inputs names, so nothing would feed it",
                    dtype_name(t)
                )));
            }
        }
        Ok(DecoderIo {
            token,
            attention_mask,
            position_ids,
            past_key,
            past_value,
            present_key,
            present_value,
            kv_type: kv_type.unwrap_or(FloatType::F32),
            logits: d.outputs.logits.clone(),
            logits_type,
            layers,
            kv_heads: d.num_key_value_heads as usize,
            head_size: d.head_size as usize,
            vocab: (lshape[2] > 0).then_some(lshape[2] as usize),
        })
    }
}
