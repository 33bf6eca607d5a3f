//! A Piper-format neural voice: `model.onnx` + `model.onnx.json`, run through ONNX Runtime.
//!
//! The published Piper format (rhasspy/piper, piper-phonemize): the JSON names the sample rate
//! (`audio.sample_rate`), the espeak-ng voice for phonemes (`espeak.voice`), the inference scales
//! (`inference.noise_scale`, `length_scale`, `noise_w`), `phoneme_type` (`espeak`), the
//! `phoneme_id_map` (one phoneme — a single Unicode code point after NFD decomposition — to a
//! list of ids) and `num_speakers` / `speaker_id_map`.
//!
//! Text → phonemes: espeak-ng's IPA output (`espeak-ng -q --ipa`), one line per clause, with the
//! clause's punctuation put back, then a space, as piper-phonemize does with espeak's clause
//! terminators. Phonemes → ids: `^` then pad, each
//! phoneme's ids followed by pad (`_`), then `$`; phonemes missing from the map are skipped and
//! counted. The graph takes `input` i64 `[1, n]`, `input_lengths` i64 `[1]`, `scales` f32 `[3]`
//! (noise_scale, length_scale, noise_w) and, for multi-speaker voices, `sid` i64 `[1]`; its first
//! output is the waveform, peak-normalised as Piper does.
//!
//! Tested here: config parsing, the phoneme-id mapping, the espeak-ng IPA step, and the session
//! plumbing against a stand-in graph with Piper's inputs and outputs. Not tested: a real Piper
//! voice (none can be downloaded here), so the sound of one is unverified.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::{Synthesizer, TtsError};
use crate::model::runtime::Runtime;

pub const PAD: char = '_';
pub const BOS: char = '^';
pub const EOS: char = '$';

/// `model.onnx.json`, the fields gemba uses (others are ignored: the format grows).
#[derive(Debug, Clone, Deserialize)]
pub struct PiperConfig {
    pub audio: PiperAudio,
    #[serde(default)]
    pub espeak: Option<PiperEspeak>,
    #[serde(default)]
    pub inference: PiperInference,
    #[serde(default = "default_phoneme_type")]
    pub phoneme_type: String,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    pub num_speakers: u32,
    #[serde(default)]
    pub speaker_id_map: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PiperAudio {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PiperEspeak {
    pub voice: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PiperInference {
    #[serde(default = "noise_scale")]
    pub noise_scale: f32,
    #[serde(default = "length_scale")]
    pub length_scale: f32,
    #[serde(default = "noise_w")]
    pub noise_w: f32,
}

impl Default for PiperInference {
    fn default() -> Self {
        PiperInference {
            noise_scale: noise_scale(),
            length_scale: length_scale(),
            noise_w: noise_w(),
        }
    }
}

fn default_phoneme_type() -> String {
    "espeak".into()
}
fn one() -> u32 {
    1
}
// Piper's own defaults (piper.hpp).
fn noise_scale() -> f32 {
    0.667
}
fn length_scale() -> f32 {
    1.0
}
fn noise_w() -> f32 {
    0.8
}

impl PiperConfig {
    pub fn parse(text: &str, path: &Path) -> Result<PiperConfig, TtsError> {
        let bad = |reason: String| TtsError::PiperConfig {
            path: path.into(),
            reason,
        };
        let c: PiperConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if c.phoneme_type != "espeak" {
            return Err(bad(format!(
                "phoneme_type {:?}: only \"espeak\" voices are supported",
                c.phoneme_type
            )));
        }
        if c.audio.sample_rate == 0 {
            return Err(bad("audio.sample_rate is 0".into()));
        }
        for sym in [PAD, BOS, EOS] {
            if !c.phoneme_id_map.contains_key(&sym.to_string()) {
                return Err(bad(format!(
                    "phoneme_id_map has no {sym:?} (pad, begin and end are required)"
                )));
            }
        }
        if let Some((k, _)) = c
            .phoneme_id_map
            .iter()
            .find(|(k, _)| k.chars().count() != 1)
        {
            return Err(bad(format!(
                "phoneme_id_map key {k:?} is not one code point"
            )));
        }
        Ok(c)
    }

    /// Ids for a phoneme string: `^ _ (p _)* $`; returns the ids and the phonemes not in the map.
    pub fn phoneme_ids(&self, phonemes: &str) -> (Vec<i64>, BTreeMap<char, usize>) {
        let map = |c: char| self.phoneme_id_map.get(c.encode_utf8(&mut [0; 4]) as &str);
        let pad = map(PAD).cloned().unwrap_or_default();
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 4);
        let mut missing = BTreeMap::new();
        ids.extend(map(BOS).into_iter().flatten());
        ids.extend(&pad);
        for c in phonemes.nfd() {
            match map(c) {
                Some(v) => {
                    ids.extend(v);
                    ids.extend(&pad);
                }
                None => *missing.entry(c).or_insert(0) += 1,
            }
        }
        ids.extend(map(EOS).into_iter().flatten());
        (ids, missing)
    }
}

/// Clauses of one sentence with the punctuation that ends each (`None` for the last when the
/// sentence has none).
pub fn clauses(text: &str) -> Vec<(String, Option<char>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let ends = matches!(c, ',' | ';' | ':' | '.' | '!' | '?')
            && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if ends {
            if !cur.trim().is_empty() {
                out.push((cur.trim().to_string(), Some(c)));
            }
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push((cur.trim().to_string(), None));
    }
    out
}

/// Joins espeak-ng's per-clause IPA lines with the clauses' punctuation, as piper-phonemize does.
pub fn join_clauses(ipa_lines: &[String], clauses: &[(String, Option<char>)]) -> String {
    let mut s = String::new();
    let aligned = ipa_lines.len() == clauses.len();
    for (i, line) in ipa_lines.iter().enumerate() {
        s.push_str(line.trim());
        let term = if aligned {
            clauses[i].1
        } else if i + 1 == ipa_lines.len() {
            clauses.last().and_then(|c| c.1)
        } else {
            None
        };
        if let Some(c) = term {
            s.push(c);
        }
        s.push(' ');
    }
    s.trim_end().to_string()
}

/// espeak-ng's IPA for `text` (one line per clause), language-switch marks like `(en)` removed.
pub fn espeak_ipa(program: &str, voice: &str, text: &str) -> Result<Vec<String>, TtsError> {
    let err = |reason: String| TtsError::Phonemes {
        text: text.into(),
        reason,
    };
    let mut child = Command::new(program)
        .args(["-q", "--ipa", "-v", voice])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    let _ = child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(|l| {
            let mut s = String::new();
            let mut depth = 0;
            for c in l.chars() {
                match c {
                    '(' => depth += 1,
                    ')' if depth > 0 => depth -= 1,
                    _ if depth == 0 => s.push(c),
                    _ => {}
                }
            }
            s.trim().to_string()
        })
        .filter(|l| !l.is_empty())
        .collect())
}

pub struct PiperVoice {
    config: PiperConfig,
    session: Session,
    path: PathBuf,
    speaker: Option<i64>,
    espeak_voice: String,
    program: String,
    has_sid: bool,
}

impl PiperVoice {
    /// Loads `model` (an `.onnx`) and its `model.onnx.json`.
    pub fn load(
        rt: &Runtime,
        model: &Path,
        speaker: Option<i64>,
        espeak_voice: Option<&str>,
    ) -> Result<PiperVoice, TtsError> {
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        let text = std::fs::read_to_string(&json_path).map_err(|e| TtsError::PiperConfig {
            path: json_path.clone(),
            reason: format!("cannot read it ({e}); a Piper voice is model.onnx + model.onnx.json"),
        })?;
        let config = PiperConfig::parse(&text, &json_path)?;
        let model_err = |reason: String| TtsError::PiperModel {
            path: model.into(),
            reason,
        };
        // Its pool does not spin between sentences: speech is made while the decoder writes the
        // next sentence, and spinning threads would take the decoder's cores.
        let session = Session::builder(&rt.env)
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|e| model_err(e.to_string()))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for want in ["input", "input_lengths", "scales"] {
            if !names.contains(&want) {
                return Err(model_err(format!(
                    "no input {want:?} (inputs: {names:?}); not a Piper voice"
                )));
            }
        }
        let has_sid = names.contains(&"sid");
        if config.num_speakers > 1 && !has_sid {
            return Err(model_err(format!(
                "{} speakers but no \"sid\" input",
                config.num_speakers
            )));
        }
        if let Some(s) = speaker {
            if s < 0 || s >= i64::from(config.num_speakers) {
                return Err(model_err(format!(
                    "speaker {s} out of range (the voice has {})",
                    config.num_speakers
                )));
            }
        }
        let espeak_voice = espeak_voice
            .map(str::to_string)
            .or_else(|| config.espeak.as_ref().map(|e| e.voice.clone()))
            .unwrap_or_else(|| "en-us".into());
        let program = std::env::var("GEMBA_ESPEAK").unwrap_or_else(|_| "espeak-ng".into());
        Ok(PiperVoice {
            config,
            session,
            path: model.into(),
            speaker,
            espeak_voice,
            program,
            has_sid,
        })
    }

    pub fn config(&self) -> &PiperConfig {
        &self.config
    }

    /// Phonemes for one sentence.
    pub fn phonemes(&self, text: &str) -> Result<String, TtsError> {
        let lines = espeak_ipa(&self.program, &self.espeak_voice, text)?;
        Ok(join_clauses(&lines, &clauses(text)))
    }
}

impl Synthesizer for PiperVoice {
    fn name(&self) -> String {
        format!(
            "piper:{}",
            self.path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    }

    fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    fn synthesize(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        out: &mut dyn FnMut(&[f32]),
    ) -> Result<(), TtsError> {
        let phonemes = self.phonemes(text)?;
        let (ids, missing) = self.config.phoneme_ids(&phonemes);
        if !missing.is_empty() {
            log::debug!("piper: phonemes not in the voice's map (skipped): {missing:?}");
        }
        if ids.len() <= 3 || cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let model_err = |e: ort::Error| TtsError::PiperModel {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let n = ids.len();
        let inf = &self.config.inference;
        let input = Tensor::from_array(([1usize, n], ids)).map_err(model_err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(model_err)?;
        let scales = Tensor::from_array((
            [3usize],
            vec![inf.noise_scale, inf.length_scale, inf.noise_w],
        ))
        .map_err(model_err)?;
        let mut inputs =
            ort::inputs! { "input" => input, "input_lengths" => lengths, "scales" => scales };
        if self.has_sid {
            let sid = Tensor::from_array(([1usize], vec![self.speaker.unwrap_or(0)]))
                .map_err(model_err)?;
            inputs.push(("sid".into(), sid.into()));
        }
        let outputs = self.session.run(inputs).map_err(model_err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(model_err)?;
        let peak = audio.iter().fold(0.0f32, |m, s| m.max(s.abs())).max(0.01);
        let scaled: Vec<f32> = audio
            .iter()
            .map(|s| (s / peak * (32767.0 / 32768.0)).clamp(-1.0, 1.0))
            .collect();
        out(&scaled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voice config in the published layout (trimmed map; real ones list ~130 phonemes).
    pub(crate) const CONFIG: &str = r#"{
      "dataset": "test", "audio": {"sample_rate": 22050, "quality": "medium"},
      "espeak": {"voice": "en-us"}, "language": {"code": "en_US"},
      "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
      "phoneme_type": "espeak", "phoneme_map": {},
      "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "!": [4], ",": [8], ".": [10],
        "?": [13], "a": [14], "b": [15], "d": [17], "e": [18], "l": [24], "m": [25], "p": [28],
        "s": [31], "z": [38], "æ": [39], "ð": [41], "ə": [59], "ɚ": [60], "ɪ": [74], "ˈ": [120],
        "ˌ": [121], "c": [16], "̧": [140]},
      "num_symbols": 256, "num_speakers": 1, "speaker_id_map": {}, "piper_version": "1.0.0"
    }"#;

    fn config() -> PiperConfig {
        PiperConfig::parse(CONFIG, Path::new("voice.onnx.json")).unwrap()
    }

    #[test]
    fn parses_the_published_format() {
        let c = config();
        assert_eq!(c.audio.sample_rate, 22050);
        assert_eq!(c.espeak.as_ref().unwrap().voice, "en-us");
        assert_eq!(
            (
                c.inference.noise_scale,
                c.inference.length_scale,
                c.inference.noise_w
            ),
            (0.667, 1.0, 0.8)
        );
        assert_eq!(c.num_speakers, 1);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let p = Path::new("v.onnx.json");
        for (text, want) in [
            (
                r#"{"audio": {"sample_rate": 22050}, "phoneme_id_map": {"^": [1], "$": [2]}}"#,
                "has no '_'",
            ),
            (
                r#"{"audio": {"sample_rate": 22050}, "phoneme_type": "text", "phoneme_id_map": {}}"#,
                "only \"espeak\"",
            ),
            (
                r#"{"audio": {"sample_rate": 0}, "phoneme_id_map": {"_": [0], "^": [1], "$": [2]}}"#,
                "sample_rate is 0",
            ),
            (
                r#"{"audio": {"sample_rate": 1}, "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "ab": [3]}}"#,
                "not one code point",
            ),
            (r#"{"phoneme_id_map": {}}"#, "missing field `audio`"),
        ] {
            let e = PiperConfig::parse(text, p).unwrap_err().to_string();
            assert!(
                e.starts_with("Piper voice config v.onnx.json: ") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn phoneme_ids_as_piper_phonemize_makes_them() {
        let c = config();
        let (ids, missing) = c.phoneme_ids("ðə lˈæmp.");
        // ^ _ ð _ ə _ ' ' _ l _ ˈ _ æ _ m _ p _ . _ $
        assert_eq!(
            ids,
            vec![1, 0, 41, 0, 59, 0, 3, 0, 24, 0, 120, 0, 39, 0, 25, 0, 28, 0, 10, 0, 2]
        );
        assert!(missing.is_empty());
        // Unknown phonemes are skipped and counted; precomposed ç is decomposed (NFD) into c + U+0327 first.
        let (ids, missing) = c.phoneme_ids("çx");
        assert_eq!(ids, vec![1, 0, 16, 0, 140, 0, 2]);
        assert_eq!(missing, BTreeMap::from([('x', 1)]));
    }

    #[test]
    fn clause_punctuation_is_put_back() {
        let text = "The lamp is amber, check the press. Now!";
        let cl = clauses(text);
        assert_eq!(
            cl,
            vec![
                ("The lamp is amber".into(), Some(',')),
                ("check the press".into(), Some('.')),
                ("Now".into(), Some('!'))
            ]
        );
        let lines: Vec<String> = ["ðə lˈæmp ɪz ˈæmbɚ", "tʃˈɛk ðə pɹˈɛs", "nˈaʊ"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            join_clauses(&lines, &cl),
            "ðə lˈæmp ɪz ˈæmbɚ, tʃˈɛk ðə pɹˈɛs. nˈaʊ!"
        );
        // A decimal point is not a clause end.
        assert_eq!(clauses("It is 3.5 bar.").len(), 1);
    }

    #[test]
    fn espeak_gives_ipa_per_clause() {
        let lines =
            espeak_ipa("espeak-ng", "en-us", "The lamp is amber, check the press.").unwrap();
        assert_eq!(
            lines,
            vec![
                "ðə lˈæmp ɪz ˈæmbɚ".to_string(),
                "tʃˈɛk ðə pɹˈɛs".to_string()
            ]
        );
    }
}
