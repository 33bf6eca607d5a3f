//! A bundle's phi4mm processor ([`processor`]: built from the [`Bundle`]'s already-parsed
//! `genai_config.json` and its tokenizer, so one tokenizer is in memory), `gemba preprocess` (a
//! prompt and its media → the sessions' input tensors in an `.npz`) and the pre-processing half
//! of `gemba bench` (time images and clips, file to tensors).
//!
//! The pre-processing itself is [`crate::media::processor`]; nothing here runs a session.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::bundle::Bundle;
use crate::media::npz;
use crate::media::processor::{
    config, AudioSource, ImageSource, InputDtypes, Phi4mmProcessor, ProcessorError,
};
use crate::media::tensor::FloatDtype;

/// The phi4mm processor of an opened bundle: its `vision_processor.json` /
/// `speech_processor.json` (named by the parsed config) and the bundle's own tokenizer, shared.
pub fn processor(bundle: &Bundle) -> Result<Phi4mmProcessor, ProcessorError> {
    let dir = &bundle.dir;
    let m = &bundle.config.model;
    if m.model_type != "phi4mm" {
        return Err(ProcessorError::Bundle {
            dir: dir.clone(),
            detail: format!("model.type is {:?}, expected \"phi4mm\"", m.model_type),
        });
    }
    let file = |name: &str| (!name.is_empty()).then(|| dir.join(name));
    let vision = m
        .vision
        .as_ref()
        .and_then(|v| file(&v.config_filename))
        .map(|p| config::parse_vision(&p))
        .transpose()?;
    let speech = m
        .speech
        .as_ref()
        .and_then(|s| file(&s.config_filename))
        .map(|p| config::parse_speech(&p))
        .transpose()?;
    let tokenizer = std::sync::Arc::clone(bundle.tokenizer.inner());
    Phi4mmProcessor::new(dir, tokenizer, vision, speech)
}

/// Open the bundle at `dir` and build its processor (the command-line paths).
fn open_processor(dir: &Path) -> anyhow::Result<Phi4mmProcessor> {
    let bundle = Bundle::open(dir)?;
    Ok(processor(&bundle)?)
}

/// Write the tensors a phi4mm bundle's sessions would receive for a prompt, images and audio.
#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessArgs {
    /// Bundle directory (genai_config.json, tokenizer.json, vision/speech_processor.json).
    #[arg(long)]
    pub model: PathBuf,
    /// PNG or JPEG image; repeat for several (the k-th fills the k-th <|image_N|>).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// WAV clip at any rate; repeat for several (the k-th fills the k-th <|audio_N|>).
    #[arg(long = "audio", value_name = "FILE")]
    pub audios: Vec<PathBuf>,
    /// Element type of pixel_values, image_attention_mask and audio_embeds, as the sessions
    /// declare them (f32, f16, bf16; bf16 is stored as its uint16 bits).
    #[arg(long, default_value = "f32", value_name = "TYPE")]
    pub float_type: FloatDtype,
    /// Output file.
    #[arg(long, value_name = "FILE.npz")]
    pub out: PathBuf,
    /// The prompt; without <|image_N|> / <|audio_N|> placeholders they are put in front.
    #[arg(default_value = "")]
    pub prompt: String,
}

/// Run `gemba preprocess`.
pub fn run(args: PreprocessArgs) -> anyhow::Result<()> {
    let processor = open_processor(&args.model)?;
    let images: Vec<ImageSource<'_>> = args.images.iter().map(|p| ImageSource::File(p)).collect();
    let audios: Vec<AudioSource<'_>> = args.audios.iter().map(|p| AudioSource::File(p)).collect();
    let processed = processor.process(&args.prompt, &images, &audios)?;
    let tensors = processed.into_tensors(InputDtypes::all(args.float_type));
    let refs: Vec<(&str, &_)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    npz::write_npz(&args.out, &refs).with_context(|| format!("writing {}", args.out.display()))?;
    for (name, t) in &tensors {
        println!("{name:<22} {:<9} {:?}", t.data.type_name(), t.shape);
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Timing of one input, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputTiming {
    pub file: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub runs: usize,
}

/// Pre-processing timings per input, file to tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreprocessBench {
    pub implementation: String,
    pub images: Vec<InputTiming>,
    pub audios: Vec<InputTiming>,
}

fn timing(file: &Path, mut samples: Vec<f64>) -> InputTiming {
    samples.sort_by(f64::total_cmp);
    let runs = samples.len();
    InputTiming {
        file: file.display().to_string(),
        median_ms: samples[runs / 2],
        min_ms: samples[0],
        mean_ms: samples.iter().sum::<f64>() / runs as f64,
        runs,
    }
}

/// Time each image and each clip on its own, `runs` times after one warm-up: reading the file,
/// decoding, pre-processing and building the prompt's tensors (with a one-placeholder prompt,
/// so the work matches what ORT-GenAI's processor does per call).
pub fn bench_preprocess(
    processor: &Phi4mmProcessor,
    images: &[PathBuf],
    audios: &[PathBuf],
    runs: usize,
) -> Result<PreprocessBench, ProcessorError> {
    let runs = runs.max(1);
    let time =
        |f: &mut dyn FnMut() -> Result<(), ProcessorError>| -> Result<Vec<f64>, ProcessorError> {
            f()?;
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    f()?;
                    Ok(t.elapsed().as_secs_f64() * 1000.0)
                })
                .collect()
        };
    let mut bench = PreprocessBench {
        implementation: "gemba".into(),
        images: vec![],
        audios: vec![],
    };
    for path in images {
        let samples = time(&mut || {
            let p = processor.process("<|image_1|>Describe.", &[ImageSource::File(path)], &[])?;
            std::hint::black_box(p.into_tensors(InputDtypes::default()));
            Ok(())
        })?;
        bench.images.push(timing(path, samples));
    }
    for path in audios {
        let samples = time(&mut || {
            let p = processor.process("<|audio_1|>Transcribe.", &[], &[AudioSource::File(path)])?;
            std::hint::black_box(p.into_tensors(InputDtypes::default()));
            Ok(())
        })?;
        bench.audios.push(timing(path, samples));
    }
    Ok(bench)
}

/// Time gemba's pre-processing against ORT-GenAI's processor on the same inputs.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchPreprocessArgs {
    /// phi4mm bundle directory.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    #[arg(long = "audio", value_name = "FILE")]
    pub audios: Vec<PathBuf>,
    /// Timed runs per input (after one warm-up).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Python with onnxruntime_genai to time the reference with
    /// (tests/conformance/bench_reference.py); without it only gemba is timed.
    #[arg(long, value_name = "PYTHON")]
    pub reference_python: Option<PathBuf>,
}

/// Run the pre-processing benchmark; prints JSON (gemba, and the reference with ratios).
pub fn run_bench(args: BenchPreprocessArgs) -> anyhow::Result<()> {
    let processor = open_processor(&args.model)?;
    let ours = bench_preprocess(&processor, &args.images, &args.audios, args.runs)?;
    let mut report = serde_json::json!({ "gemba": ours });
    if let Some(python) = &args.reference_python {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/bench_reference.py");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&script)
            .arg("--model")
            .arg(&args.model)
            .arg("--runs")
            .arg(args.runs.to_string());
        for i in &args.images {
            cmd.arg("--image").arg(i);
        }
        for a in &args.audios {
            cmd.arg("--audio").arg(a);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let reference: PreprocessBench =
            serde_json::from_slice(&out.stdout).context("parsing the reference timings")?;
        let ratio = |a: &[InputTiming], b: &[InputTiming]| -> Vec<f64> {
            a.iter()
                .zip(b)
                .map(|(g, r)| r.median_ms / g.median_ms)
                .collect()
        };
        report["ortgenai"] = serde_json::to_value(&reference)?;
        report["speedup_images"] = serde_json::to_value(ratio(&ours.images, &reference.images))?;
        report["speedup_audios"] = serde_json::to_value(ratio(&ours.audios, &reference.audios))?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_processor_shares_the_bundles_tokenizer() {
        let bundle = Bundle::open(&repo().join("models/demo")).unwrap();
        let p = processor(&bundle).unwrap();
        assert!(std::sync::Arc::ptr_eq(
            p.tokenizer(),
            bundle.tokenizer.inner()
        ));
        assert!(p.vision_settings().is_some() && p.speech().is_some());
    }

    #[test]
    fn errors_name_the_bundle_file_and_key() {
        let qwen = Bundle::open(&repo().join("models/tiny-qwen2/fp32")).unwrap();
        let e = processor(&qwen).unwrap_err().to_string();
        assert!(e.contains("phi4mm") && e.contains("tiny-qwen2/fp32"), "{e}");

        // The demo bundle with an unknown key in its vision_processor.json.
        let demo = repo().join("models/demo");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&demo).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::write(
            dir.path().join("vision_processor.json"),
            r#"{"processor": {"transforms": [], "colour": 1}}"#,
        )
        .unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        let e = processor(&bundle).unwrap_err().to_string();
        assert!(
            e.contains("vision_processor.json") && e.contains("colour"),
            "{e}"
        );
    }
}
