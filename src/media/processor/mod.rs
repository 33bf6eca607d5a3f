//! The phi4mm multimodal processor: a prompt with images and audio clips → the named tensors
//! ORT-GenAI's `PhiMultiModalProcessor` feeds the vision, speech and embedding sessions.
//!
//! In: the bundle's parsed processor settings ([`config`]) and its tokenizer, handed over by
//! `model::preprocess` (one parse, one tokenizer in memory); a prompt, images and clips from
//! files, encoded bytes or decoded frames. Out: [`ProcessedInputs`] — `input_ids` with each
//! `<|image_N|>` / `<|audio_N|>` placeholder expanded to its token count, the image and audio
//! batches, `audio_projection_mode` — and, through [`ProcessedInputs::tensors`], the tensors by
//! ORT-GenAI's names in the element types the sessions declare.
//!
//! Prompt rules, as ORT-GenAI applies them: placeholders are matched by pattern (their number is
//! not used — the k-th placeholder takes the k-th image), replaced by `<|endoftext10|>` /
//! `<|endoftext11|>`, tokenized, and each id 200010 / 200011 repeated `num_img_tokens[k]` /
//! `audio_sizes[k]` times; a placeholder count that differs from the media count is an error.
//! One addition: a prompt with no placeholders at all gets `<|image_1|>\n…<|audio_1|>\n…` in
//! front of its text, images first — the order ORT-GenAI's own phi4mm example builds.

pub mod config;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::speech::{
    self, AudioBatch, AudioInput, Pcm, SpeechError, SpeechProcessor, SpeechSettings,
};
use super::tensor::{FloatDtype, HostTensor};
use super::vision::{self, ImageBatch, ImageInput, VisionError, VisionSettings};
pub use config::ConfigError;

/// Token id an image placeholder becomes (`<|endoftext10|>` in Phi-4's vocabulary).
pub const IMAGE_TOKEN_ID: u32 = 200_010;
/// Token id an audio placeholder becomes (`<|endoftext11|>`).
pub const AUDIO_TOKEN_ID: u32 = 200_011;
const IMAGE_TOKEN: &str = "<|endoftext10|>";
const AUDIO_TOKEN: &str = "<|endoftext11|>";

/// Everything that can go wrong turning a prompt and its media into tensors.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("bundle {dir}: {detail}")]
    Bundle { dir: PathBuf, detail: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tokenizer {path}: {detail}")]
    Tokenizer { path: PathBuf, detail: String },
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error(transparent)]
    Speech(#[from] SpeechError),
    #[error("prompt: {detail}")]
    Prompt { detail: String },
}

/// Element types the sessions declare for the float inputs (ORT-GenAI reads them from the
/// vision and speech graphs; the model worker passes them here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputDtypes {
    pub pixel_values: FloatDtype,
    pub image_attention_mask: FloatDtype,
    pub audio_embeds: FloatDtype,
}

impl InputDtypes {
    /// The same type for all three.
    pub fn all(dtype: FloatDtype) -> Self {
        InputDtypes {
            pixel_values: dtype,
            image_attention_mask: dtype,
            audio_embeds: dtype,
        }
    }
}

/// An image to process.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// A PNG or JPEG file.
    File(&'a Path),
    /// PNG or JPEG bytes; `name` labels errors.
    Encoded { bytes: &'a [u8], name: &'a str },
    /// A decoded frame: `height` rows of `width` RGB8 pixels.
    Rgb {
        width: usize,
        height: usize,
        data: &'a [u8],
        name: &'a str,
    },
}

/// An audio clip to process.
#[derive(Debug, Clone, Copy)]
pub enum AudioSource<'a> {
    /// A WAV file.
    File(&'a Path),
    /// WAV bytes; `name` labels errors.
    Wav { bytes: &'a [u8], name: &'a str },
    /// Decoded interleaved PCM at any rate.
    Pcm { pcm: &'a Pcm, name: &'a str },
}

/// The processor's output for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedInputs {
    /// The prompt after placeholder insertion and replacement, as tokenized.
    pub text: String,
    /// Token ids with each placeholder repeated to its media's token count.
    pub input_ids: Vec<i64>,
    pub images: Option<ImageBatch>,
    pub audios: Option<AudioBatch>,
    /// 0 text only, 1 with images, 2 with audio, 3 with both.
    pub audio_projection_mode: i64,
}

impl ProcessedInputs {
    /// The tensors by ORT-GenAI's names, floats in the sessions' declared types. Image tensors
    /// appear only with images, audio tensors only with audio.
    pub fn tensors(&self, dtypes: InputDtypes) -> Vec<(&'static str, HostTensor)> {
        self.clone().into_tensors(dtypes)
    }

    /// As [`Self::tensors`], moving the buffers instead of copying them.
    pub fn into_tensors(self, dtypes: InputDtypes) -> Vec<(&'static str, HostTensor)> {
        let n_ids = self.input_ids.len();
        let mut out = vec![("input_ids", HostTensor::i64(vec![1, n_ids], self.input_ids))];
        if let Some(b) = self.images {
            let (n, v, base, m) = (b.images, b.views, b.base_resolution, b.mask_resolution);
            let pixels = vec![n, v, 3, base, base];
            let masks = vec![n, v, m, m];
            out.extend([
                (
                    "pixel_values",
                    HostTensor::float(pixels, b.pixel_values, dtypes.pixel_values),
                ),
                (
                    "image_attention_mask",
                    HostTensor::float(masks, b.attention_mask, dtypes.image_attention_mask),
                ),
                ("image_sizes", HostTensor::i64(vec![n, 2], b.image_sizes)),
                (
                    "num_image_tokens",
                    HostTensor::i64(vec![n, 1], b.num_img_tokens),
                ),
            ]);
        }
        if let Some(a) = self.audios {
            let (clips, frames) = (a.clips, a.max_frames);
            out.extend([
                (
                    "audio_embeds",
                    HostTensor::float(vec![clips, frames, a.n_mel], a.embeds, dtypes.audio_embeds),
                ),
                (
                    "audio_attention_mask",
                    HostTensor::bool(vec![clips, frames], a.attention_mask),
                ),
                ("audio_sizes", HostTensor::i64(vec![clips], a.sizes)),
            ]);
        }
        let mode = vec![self.audio_projection_mode];
        out.push(("audio_projection_mode", HostTensor::i64(vec![1], mode)));
        out
    }
}

/// Pre-processing for one phi4mm bundle. Cheap to share: processing takes `&self`.
pub struct Phi4mmProcessor {
    dir: PathBuf,
    tokenizer: Arc<Tokenizer>,
    /// The tokenizer's ids of `<|endoftext10|>` and `<|endoftext11|>` (usually 200010 and
    /// 200011; mapped to those in `input_ids` when they are not).
    placeholder_ids: [u32; 2],
    vision: Option<VisionSettings>,
    speech: Option<SpeechProcessor>,
    /// The last decoded or encoded image pre-processed, keyed by XXH3-128 of its size and bytes:
    /// an alert look asks each of a camera's rules on the same frame, and the frame is resized
    /// and normalised once (12–14 ms a demo frame). A file is read again every time.
    image_memo: std::sync::Mutex<Option<(u128, Arc<ImageInput>)>>,
    /// Images pre-processed, and those taken from the memo instead.
    pub images_processed: std::sync::atomic::AtomicU64,
    pub images_reused: std::sync::atomic::AtomicU64,
}

/// The memo key of an image given as bytes: its kind, size and bytes.
fn image_key(kind: &[u8], width: usize, height: usize, bytes: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(kind);
    h.update(&(width as u64).to_le_bytes());
    h.update(&(height as u64).to_le_bytes());
    h.update(bytes);
    h.digest128()
}

impl std::fmt::Debug for Phi4mmProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phi4mmProcessor")
            .field("dir", &self.dir)
            .field("vision", &self.vision)
            .field("speech", &self.speech)
            .finish_non_exhaustive()
    }
}

impl Phi4mmProcessor {
    /// A processor from settings and a tokenizer the caller has already loaded (the model layer
    /// passes its bundle's parsed `vision_processor.json` / `speech_processor.json` and its own
    /// tokenizer, so nothing is read twice). `dir` names the bundle in errors.
    ///
    /// The tokenizer is shared, not copied, when it knows the placeholder tokens; one that does
    /// not gets them as special tokens on a private copy, so the text around them is split
    /// exactly as around known ones, and their ids are mapped to the model's.
    pub fn new(
        dir: &Path,
        tokenizer: Arc<Tokenizer>,
        vision: Option<VisionSettings>,
        speech: Option<SpeechSettings>,
    ) -> Result<Self, ProcessorError> {
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizer;
        let mut placeholder_ids = [0u32; 2];
        for (slot, token) in placeholder_ids.iter_mut().zip([IMAGE_TOKEN, AUDIO_TOKEN]) {
            if tokenizer.token_to_id(token).is_none() {
                Arc::make_mut(&mut tokenizer)
                    .add_special_tokens(&[tokenizers::AddedToken::from(token, true)]);
            }
            *slot = tokenizer
                .token_to_id(token)
                .ok_or_else(|| ProcessorError::Tokenizer {
                    path: tok_path.clone(),
                    detail: format!("cannot add the placeholder token {token}"),
                })?;
        }
        Ok(Phi4mmProcessor {
            dir: dir.to_owned(),
            tokenizer,
            placeholder_ids,
            vision,
            speech: speech.map(SpeechProcessor::new),
            image_memo: std::sync::Mutex::new(None),
            images_processed: Default::default(),
            images_reused: Default::default(),
        })
    }

    /// The tokenizer the processor encodes prompts with (the caller's, unless placeholder
    /// tokens had to be added).
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The image settings, if the bundle has a vision component.
    pub fn vision_settings(&self) -> Option<&VisionSettings> {
        self.vision.as_ref()
    }

    /// The audio processor, if the bundle has a speech component.
    pub fn speech(&self) -> Option<&SpeechProcessor> {
        self.speech.as_ref()
    }

    /// Pre-process one image.
    pub fn process_image(&self, image: ImageSource<'_>) -> Result<Arc<ImageInput>, ProcessorError> {
        let settings = self.vision.as_ref().ok_or_else(|| ProcessorError::Bundle {
            dir: self.dir.clone(),
            detail: "an image was given but the bundle has no vision.config_filename".into(),
        })?;
        let key = match image {
            ImageSource::File(_) => None,
            ImageSource::Encoded { bytes, .. } => Some(image_key(b"encoded", 0, 0, bytes)),
            ImageSource::Rgb {
                width,
                height,
                data,
                ..
            } => Some(image_key(b"rgb", width, height, data)),
        };
        if let Some(k) = key {
            let hit = self
                .image_memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|(mk, _)| *mk == k)
                .map(|(_, input)| Arc::clone(input));
            if let Some(input) = hit {
                self.images_reused.fetch_add(1, Ordering::Relaxed);
                return Ok(input);
            }
        }
        let input = Arc::new(match image {
            ImageSource::File(path) => {
                let img = vision::load_image(path)?;
                vision::preprocess_rgb(
                    settings,
                    img.width,
                    img.height,
                    &img.rgb,
                    &path.display().to_string(),
                )?
            }
            ImageSource::Encoded { bytes, name } => {
                let img = vision::decode_image(bytes, name)?;
                vision::preprocess_rgb(settings, img.width, img.height, &img.rgb, name)?
            }
            ImageSource::Rgb {
                width,
                height,
                data,
                name,
            } => vision::preprocess_rgb(settings, width, height, data, name)?,
        });
        self.images_processed.fetch_add(1, Ordering::Relaxed);
        if let Some(k) = key {
            *self.image_memo.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((k, Arc::clone(&input)));
        }
        Ok(input)
    }

    /// Pre-process one audio clip.
    pub fn process_audio(&self, audio: AudioSource<'_>) -> Result<AudioInput, ProcessorError> {
        let speech = self.speech.as_ref().ok_or_else(|| ProcessorError::Bundle {
            dir: self.dir.clone(),
            detail: "audio was given but the bundle has no speech.config_filename".into(),
        })?;
        Ok(match audio {
            AudioSource::File(path) => {
                // Read only what the model will hear: a long recording costs no more memory.
                let pcm = speech::load_wav_within(path, &|rate| speech.max_input_frames(rate))?;
                speech.process(&pcm, &path.display().to_string())?
            }
            AudioSource::Wav { bytes, name } => {
                let pcm =
                    speech::decode_wav_within(bytes, name, &|rate| speech.max_input_frames(rate))?;
                speech.process(&pcm, name)?
            }
            AudioSource::Pcm { pcm, name } => speech.process(pcm, name)?,
        })
    }

    /// Turn a prompt and its media into the sessions' inputs.
    pub fn process(
        &self,
        prompt: &str,
        images: &[ImageSource<'_>],
        audios: &[AudioSource<'_>],
    ) -> Result<ProcessedInputs, ProcessorError> {
        let image_inputs = images
            .iter()
            .map(|&i| self.process_image(i))
            .collect::<Result<Vec<_>, _>>()?;
        let audio_inputs = audios
            .iter()
            .map(|&a| self.process_audio(a))
            .collect::<Result<Vec<_>, _>>()?;
        let image_tokens: Vec<i64> = image_inputs.iter().map(|i| i.num_img_tokens).collect();
        let audio_tokens: Vec<i64> = audio_inputs.iter().map(|a| a.audio_size).collect();
        let (text, input_ids) = self.expand_prompt(prompt, &image_tokens, &audio_tokens)?;
        let images = match (&self.vision, image_inputs.is_empty()) {
            (Some(settings), false) => Some(ImageBatch::stack(&image_inputs, settings)),
            _ => None,
        };
        let audios = (!audio_inputs.is_empty()).then(|| AudioBatch::stack(&audio_inputs));
        let audio_projection_mode = match (images.is_some(), audios.is_some()) {
            (false, false) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (true, true) => 3,
        };
        Ok(ProcessedInputs {
            text,
            input_ids,
            images,
            audios,
            audio_projection_mode,
        })
    }

    /// Tokenize a prompt with its placeholders expanded to the given token counts.
    pub fn expand_prompt(
        &self,
        prompt: &str,
        image_tokens: &[i64],
        audio_tokens: &[i64],
    ) -> Result<(String, Vec<i64>), ProcessorError> {
        let text = placeholder_text(prompt, image_tokens.len(), audio_tokens.len());
        let encoding =
            self.tokenizer
                .encode(text.as_str(), true)
                .map_err(|e| ProcessorError::Tokenizer {
                    path: self.dir.join("tokenizer.json"),
                    detail: e.to_string(),
                })?;
        let [image_id, audio_id] = self.placeholder_ids;
        let ids: Vec<u32> = encoding
            .get_ids()
            .iter()
            .map(|&t| match t {
                t if t == image_id => IMAGE_TOKEN_ID,
                t if t == audio_id => AUDIO_TOKEN_ID,
                t => t,
            })
            .collect();
        let ids = expand_ids(&ids, image_tokens, audio_tokens)?;
        Ok((text, ids))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Image,
    Audio,
}

/// `<|image_N|>` / `<|audio_N|>` occurrences: byte range and kind.
fn find_placeholders(prompt: &str) -> Vec<(std::ops::Range<usize>, Placeholder)> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(off) = prompt[i..].find("<|") {
        let start = i + off;
        let rest = &prompt[start + 2..];
        let kind = if rest.starts_with("image_") {
            Some(Placeholder::Image)
        } else if rest.starts_with("audio_") {
            Some(Placeholder::Audio)
        } else {
            None
        };
        if let Some(kind) = kind {
            let digits = rest[6..].bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[6 + digits..].starts_with("|>") {
                let end = start + 2 + 6 + digits + 2;
                found.push((start..end, kind));
                i = end;
                continue;
            }
        }
        i = start + 2;
    }
    found
}

/// The prompt text to tokenize: placeholders inserted when there are none, then replaced by the
/// tokens that stand for them.
fn placeholder_text(prompt: &str, images: usize, audios: usize) -> String {
    let found = find_placeholders(prompt);
    let prompt = if found.is_empty() && images + audios > 0 {
        let mut tags = String::new();
        for i in 1..=images {
            tags.push_str(&format!("<|image_{i}|>\n"));
        }
        for i in 1..=audios {
            tags.push_str(&format!("<|audio_{i}|>\n"));
        }
        tags + prompt
    } else {
        prompt.to_owned()
    };
    let mut out = String::with_capacity(prompt.len());
    let mut last = 0;
    for (range, kind) in find_placeholders(&prompt) {
        out.push_str(&prompt[last..range.start]);
        out.push_str(match kind {
            Placeholder::Image => IMAGE_TOKEN,
            Placeholder::Audio => AUDIO_TOKEN,
        });
        last = range.end;
    }
    out.push_str(&prompt[last..]);
    out
}

/// Repeat each placeholder id by its media's token count; counts must match exactly.
fn expand_ids(
    ids: &[u32],
    image_tokens: &[i64],
    audio_tokens: &[i64],
) -> Result<Vec<i64>, ProcessorError> {
    let mut out = Vec::with_capacity(
        ids.len() + image_tokens.iter().chain(audio_tokens).sum::<i64>() as usize,
    );
    let (mut img, mut aud) = (0, 0);
    for &id in ids {
        let (counts, next, what) = match id {
            IMAGE_TOKEN_ID => (image_tokens, &mut img, "image"),
            AUDIO_TOKEN_ID => (audio_tokens, &mut aud, "audio"),
            _ => {
                out.push(i64::from(id));
                continue;
            }
        };
        let n = *counts.get(*next).ok_or_else(|| ProcessorError::Prompt {
            detail: format!(
                "more {what} placeholders than the {} {what} input(s) given",
                counts.len()
            ),
        })?;
        out.extend(std::iter::repeat_n(i64::from(id), n as usize));
        *next += 1;
    }
    for (used, counts, what) in [(img, image_tokens, "image"), (aud, audio_tokens, "audio")] {
        if used != counts.len() {
            return Err(ProcessorError::Prompt {
                detail: format!(
                    "{used} {what} placeholder(s) for {} {what} input(s); write one <|{what}_N|> \
                     per {what}, or none at all to have them put in front",
                    counts.len()
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo bundle's processor, its tokenizer without the placeholder tokens when `strip`.
    fn demo_processor(strip: bool) -> Phi4mmProcessor {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let mut tok: serde_json::Value =
            serde_json::from_slice(&std::fs::read(demo.join("tokenizer.json")).unwrap()).unwrap();
        if strip {
            tok["added_tokens"]
                .as_array_mut()
                .unwrap()
                .retain(|t| ![IMAGE_TOKEN, AUDIO_TOKEN].contains(&t["content"].as_str().unwrap()));
            let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
            vocab.remove(IMAGE_TOKEN);
            vocab.remove(AUDIO_TOKEN);
        }
        let tok = Tokenizer::from_bytes(tok.to_string().as_bytes()).unwrap();
        let vision = config::parse_vision(&demo.join("vision_processor.json")).unwrap();
        let speech = config::parse_speech(&demo.join("speech_processor.json")).unwrap();
        Phi4mmProcessor::new(&demo, Arc::new(tok), Some(vision), Some(speech)).unwrap()
    }

    /// The same frame twice (an alert look's rules) is pre-processed once and given back the
    /// same; another frame, or a file, is pre-processed again.
    #[test]
    fn the_same_image_is_preprocessed_once() {
        let p = demo_processor(false);
        let (w, h) = (64usize, 48usize);
        let mut rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        fn frame(w: usize, h: usize, data: &[u8]) -> ImageSource<'_> {
            ImageSource::Rgb {
                width: w,
                height: h,
                data,
                name: "cam",
            }
        }
        let counts = |p: &Phi4mmProcessor| {
            (
                p.images_processed.load(Ordering::Relaxed),
                p.images_reused.load(Ordering::Relaxed),
            )
        };
        let first = p.process_image(frame(w, h, &rgb)).unwrap();
        let again = p.process_image(frame(w, h, &rgb)).unwrap();
        assert_eq!(counts(&p), (1, 1));
        assert_eq!(again, first);
        assert_eq!(
            demo_processor(false)
                .process_image(frame(w, h, &rgb))
                .unwrap(),
            first,
            "the memo gives what a fresh processor computes"
        );
        // One byte changed: pre-processed again, and it shows.
        rgb[0] ^= 0xff;
        let other = p.process_image(frame(w, h, &rgb)).unwrap();
        assert_eq!(counts(&p), (2, 1));
        assert_ne!(other.pixel_values, first.pixel_values);
        assert!(Arc::ptr_eq(&again, &first), "shared, not copied");
        // The same size but transposed (48x64) is another image.
        p.process_image(frame(h, w, &rgb)).unwrap();
        assert_eq!(counts(&p), (3, 1));
        // A file is read again each time (it may have changed).
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/frames/belt-1_03.jpg");
        p.process_image(ImageSource::File(&file)).unwrap();
        p.process_image(ImageSource::File(&file)).unwrap();
        assert_eq!(counts(&p), (5, 1));
    }

    #[test]
    fn a_tokenizer_without_the_placeholder_tokens_gets_the_same_ids() {
        let known = demo_processor(false);
        let stripped = demo_processor(true);
        assert_ne!(stripped.placeholder_ids, [IMAGE_TOKEN_ID, AUDIO_TOKEN_ID]);
        for prompt in [
            "<|user|><|image_1|>What colour is the lamp?<|audio_1|><|end|><|assistant|>",
            "<|user|><|image_1|>\n<|audio_1|>\nAnswer.<|end|><|assistant|>",
            "Describe the scene.",
        ] {
            let want = known.expand_prompt(prompt, &[3], &[2]).unwrap();
            let got = stripped.expand_prompt(prompt, &[3], &[2]).unwrap();
            assert_eq!(got, want, "{prompt}");
            assert!(got.1.contains(&i64::from(IMAGE_TOKEN_ID)));
            assert!(got.1.contains(&i64::from(AUDIO_TOKEN_ID)));
        }
    }

    #[test]
    fn placeholders_are_found_by_pattern() {
        let p = "<|user|><|image_1|>a<|audio_12|><|image_|><|image_x|><|audio_3|";
        let found: Vec<_> = find_placeholders(p)
            .into_iter()
            .map(|(r, k)| (&p[r], k))
            .collect();
        assert_eq!(
            found,
            vec![
                ("<|image_1|>", Placeholder::Image),
                ("<|audio_12|>", Placeholder::Audio)
            ]
        );
    }

    #[test]
    fn placeholder_text_replaces_or_prepends() {
        assert_eq!(
            placeholder_text("<|image_2|>x<|audio_1|>", 1, 1),
            "<|endoftext10|>x<|endoftext11|>"
        );
        assert_eq!(
            placeholder_text("Describe.", 2, 1),
            "<|endoftext10|>\n<|endoftext10|>\n<|endoftext11|>\nDescribe."
        );
        assert_eq!(placeholder_text("plain", 0, 0), "plain");
    }

    #[test]
    fn ids_expand_by_token_counts_and_counts_must_match() {
        let ids = [5, IMAGE_TOKEN_ID, 6, AUDIO_TOKEN_ID, IMAGE_TOKEN_ID];
        let out = expand_ids(&ids, &[2, 3], &[1]).unwrap();
        let i = i64::from(IMAGE_TOKEN_ID);
        let a = i64::from(AUDIO_TOKEN_ID);
        assert_eq!(out, vec![5, i, i, 6, a, i, i, i]);
        let e = expand_ids(&ids, &[2], &[1]).unwrap_err().to_string();
        assert!(e.contains("more image placeholders"), "{e}");
        let e = expand_ids(&ids, &[2, 3, 4], &[1]).unwrap_err().to_string();
        assert!(e.contains("2 image placeholder(s) for 3"), "{e}");
        let e = expand_ids(&[5], &[], &[7]).unwrap_err().to_string();
        assert!(e.contains("0 audio placeholder(s) for 1"), "{e}");
    }
}
