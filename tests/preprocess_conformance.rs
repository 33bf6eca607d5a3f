//! `gemba preprocess` against ORT-GenAI's multimodal processor (the reference implementation):
//! the same bundle, prompts, images and audio clips through both, every tensor compared.
//!
//! Inputs are made here (PNG images of many sizes, aspect ratios and colour types, WAV clips at
//! 8 / 11.025 / 16 / 22.05 / 44.1 / 48 kHz in several sample formats) plus the committed JPEG
//! fixtures. The reference runs `tests/conformance/reference_preprocess.py` with the venv's
//! onnxruntime-genai (`.venv/bin/python`, see the brief). Integer tensors must be equal, float
//! tensors within 1e-3 (one half-precision step when the sessions take fp16 / bf16).
//!
//! gemba's side runs the `gemba preprocess` command function in-process, from the same
//! argument list the binary parses: with `CARGO_TARGET_DIR` shared between worktrees, the
//! `gemba` executable can be replaced by another checkout's build while this test runs.
//!
//! The bundle comes from one place, [`bundle_dir`]: for fp32 inputs `GEMBA_CONFORMANCE_BUNDLE`
//! if set, else [`DEMO_BUNDLE`]; for fp16 / bf16 inputs a minimal phi4mm bundle built by
//! `tests/conformance/make_processor_bundle.py` (the processor only needs the configs, the
//! session input types and the tokenizer).

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use gemba::media::npz::read_npz;
use gemba::media::tensor::{HostTensor, TensorData};
use gemba::model::preprocess::PreprocessArgs;

/// The committed demo bundle: the fp32 cases run on the real thing.
const DEMO_BUNDLE: &str = "models/demo";
const BUNDLE_ENV: &str = "GEMBA_CONFORMANCE_BUNDLE";
const TOLERANCE: f64 = 1e-3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: the conformance test needs the venv with onnxruntime-genai (see the brief)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The phi4mm bundle both implementations load. `float_type` other than `f32` asks for a
/// generated bundle whose sessions take that type (the real bundle's types are what they are).
fn bundle_dir(scratch: &Path, float_type: &str) -> PathBuf {
    if float_type == "f32" {
        if let Some(dir) = std::env::var_os(BUNDLE_ENV) {
            return PathBuf::from(dir);
        }
        return repo().join(DEMO_BUNDLE);
    }
    let out = scratch.join(format!("bundle-{float_type}"));
    run(Command::new(python())
        .arg(repo().join("tests/conformance/make_processor_bundle.py"))
        .arg(&out)
        .arg("--float-type")
        .arg(float_type));
    out
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// A gradient with texture, noise and a sharp coloured block, as PNG.
fn write_png(path: &Path, w: u32, h: u32, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let fx = f64::from(x) / f64::from(w.max(2) - 1);
            let fy = f64::from(y) / f64::from(h.max(2) - 1);
            let block = x > w / 3 && x < w / 2 && y > h / 4 && y < h / 2;
            let base = if block {
                [230.0, 20.0, 40.0]
            } else {
                [
                    255.0 * fx,
                    255.0 * fy,
                    128.0 + 100.0 * (f64::from(x + y) / 9.0).sin(),
                ]
            };
            for b in base {
                data.push((b + 30.0 * rng.unit()).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

/// PNG colour types and depths the reference's libpng path expands to RGB: 16-bit RGB (high
/// byte kept), grey + alpha, RGBA (alpha dropped, not composited), a palette with
/// transparency, 4-bit grey.
fn write_png_variants(dir: &Path) -> Vec<PathBuf> {
    let (w, h) = (300u32, 200u32);
    let mut rng = Rng(77);
    let mut bytes = |n: usize| (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>();
    let n = (w * h) as usize;
    let variants: Vec<(&str, png::ColorType, png::BitDepth, Vec<u8>)> = vec![
        (
            "rgb16",
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            bytes(n * 6),
        ),
        (
            "grey_alpha",
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Eight,
            bytes(n * 2),
        ),
        (
            "rgba",
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            bytes(n * 4),
        ),
        (
            "palette",
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            bytes(n).iter().map(|b| b % 16).collect(),
        ),
        (
            "grey4",
            png::ColorType::Grayscale,
            png::BitDepth::Four,
            bytes(n / 2),
        ),
    ];
    let palette = bytes(16 * 3);
    let mut out = Vec::new();
    for (name, color, depth, data) in variants {
        let path = dir.join(format!("png_{name}.png"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut enc = png::Encoder::new(file, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if color == png::ColorType::Indexed {
            enc.set_palette(palette.clone());
            enc.set_trns((0..16u8).map(|i| i * 16).collect::<Vec<_>>());
        }
        enc.write_header().unwrap().write_image_data(&data).unwrap();
        out.push(path);
    }
    out
}

#[derive(Clone, Copy)]
enum Sample {
    U8,
    I16,
    I24,
    F32,
}

/// A rising chirp, a high tone gated on and off, and noise: energy across the Mel range.
fn write_wav(path: &Path, rate: u32, channels: u16, secs: f64, sample: Sample, seed: u64) {
    let (bits, format) = match sample {
        Sample::U8 => (8, hound::SampleFormat::Int),
        Sample::I16 => (16, hound::SampleFormat::Int),
        Sample::I24 => (24, hound::SampleFormat::Int),
        Sample::F32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: format,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut rng = Rng(seed | 1);
    let n = (f64::from(rate) * secs) as usize;
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        let tone = if t % 0.5 < 0.2 {
            0.2 * (2.0 * std::f64::consts::PI * 3500.0 * t).sin()
        } else {
            0.0
        };
        let x = 0.3 * (2.0 * std::f64::consts::PI * (300.0 + 900.0 * t) * t).sin()
            + tone
            + 0.05 * rng.unit();
        for c in 0..channels {
            let v = (if c == 0 {
                x
            } else {
                0.5 * x + 0.02 * rng.unit()
            })
            .clamp(-1.0, 1.0);
            match sample {
                Sample::U8 => w.write_sample((v * 127.0) as i8).unwrap(),
                Sample::I16 => w.write_sample((v * 32767.0) as i16).unwrap(),
                Sample::I24 => w.write_sample((v * 8_388_607.0) as i32).unwrap(),
                Sample::F32 => w.write_sample(v as f32).unwrap(),
            }
        }
    }
    w.finalize().unwrap();
}

/// `gemba preprocess`'s arguments, parsed as the binary parses them.
#[derive(Parser)]
struct PreprocessCommand {
    #[command(flatten)]
    args: PreprocessArgs,
}

struct Case {
    name: String,
    /// The prompt gemba gets.
    prompt: String,
    /// The prompt the reference gets (differs only where gemba inserts placeholders itself).
    reference_prompt: String,
    images: Vec<PathBuf>,
    audios: Vec<PathBuf>,
}

impl Case {
    fn new(name: &str, prompt: &str, images: Vec<PathBuf>, audios: Vec<PathBuf>) -> Self {
        Case {
            name: name.into(),
            prompt: prompt.into(),
            reference_prompt: prompt.into(),
            images,
            audios,
        }
    }
}

/// Per-tensor comparison; returns failure lines and a summary line per tensor.
fn compare(
    case: &str,
    reference: &[(String, HostTensor)],
    ours: &[(String, HostTensor)],
) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let ours_names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    let ref_names: Vec<&str> = reference.iter().map(|(n, _)| n.as_str()).collect();
    for n in &ours_names {
        if !ref_names.contains(n) {
            failures.push(format!("{case}: gemba wrote {n}, the reference has none"));
        }
    }
    for (name, r) in reference {
        let Some((_, o)) = ours.iter().find(|(n, _)| n == name) else {
            failures.push(format!("{case}: {name} missing from gemba's output"));
            continue;
        };
        if r.shape != o.shape {
            failures.push(format!(
                "{case}: {name} shape {:?} (gemba) vs {:?} (reference)",
                o.shape, r.shape
            ));
            continue;
        }
        let (rv, ov) = (r.data.to_f64(), o.data.to_f64());
        let (mut max, mut at) = (0.0f64, 0usize);
        for (i, (a, b)) in rv.iter().zip(&ov).enumerate() {
            let d = (a - b).abs();
            if d > max {
                (max, at) = (d, i);
            }
        }
        // Values equal to 1e-3 in f32 can land on neighbouring half-precision values: allow
        // one step of the largest magnitude.
        let step =
            |bits: i32| rv.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1.0) * 2f64.powi(-bits);
        let tolerance = match &r.data {
            TensorData::F32(_) => TOLERANCE,
            TensorData::F16(_) => TOLERANCE.max(step(10)),
            TensorData::BF16(_) => TOLERANCE.max(step(7)),
            _ => 0.0,
        };
        summary.push(format!(
            "{case:<28} {name:<22} {:<9} {:?} max|Δ| {max:.3e}",
            r.data.type_name(),
            r.shape
        ));
        if max > tolerance {
            failures.push(format!(
                "{case}: {name} differs by {max:.3e} at flat index {at} (gemba {}, reference {}; tolerance {tolerance:.1e})",
                ov[at], rv[at]
            ));
        }
    }
    (failures, summary)
}

fn float_type(reference: &[(String, HostTensor)]) -> &'static str {
    let floats = reference
        .iter()
        .find(|(n, _)| n == "pixel_values" || n == "audio_embeds");
    match floats.map(|(_, t)| &t.data) {
        Some(TensorData::F16(_)) => "f16",
        Some(TensorData::BF16(_)) => "bf16",
        _ => "f32",
    }
}

/// Run every case through the reference (one process) and gemba (one process per case).
fn check(bundle: &Path, scratch: &Path, cases: &[Case]) -> Vec<String> {
    let list: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "prompt": c.reference_prompt,
                "images": c.images,
                "audios": c.audios,
                "out": scratch.join(format!("{}.ref.npz", c.name)),
            })
        })
        .collect();
    let cases_json = scratch.join(format!(
        "cases-{}.json",
        bundle.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&cases_json, serde_json::to_string_pretty(&list).unwrap()).unwrap();
    run(Command::new(python())
        .arg(repo().join("tests/conformance/reference_preprocess.py"))
        .arg("--model")
        .arg(bundle)
        .arg("--cases")
        .arg(&cases_json));

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for c in cases {
        let reference = read_npz(&scratch.join(format!("{}.ref.npz", c.name))).unwrap();
        let out = scratch.join(format!("{}.gemba.npz", c.name));
        let mut argv: Vec<std::ffi::OsString> =
            vec!["preprocess".into(), "--model".into(), bundle.into()];
        argv.extend([
            "--out".into(),
            out.clone().into(),
            "--float-type".into(),
            float_type(&reference).into(),
        ]);
        for i in &c.images {
            argv.extend(["--image".into(), i.into()]);
        }
        for a in &c.audios {
            argv.extend(["--audio".into(), a.into()]);
        }
        argv.push(c.prompt.clone().into());
        let args = PreprocessCommand::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name))
            .args;
        gemba::model::preprocess::run(args)
            .unwrap_or_else(|e| panic!("{}: gemba preprocess: {e:#}", c.name));
        let ours = read_npz(&out).unwrap();
        let (f, s) = compare(&c.name, &reference, &ours);
        failures.extend(f);
        summary.extend(s);
    }
    eprintln!("{}", summary.join("\n"));
    failures
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

#[test]
fn preprocess_matches_ortgenai() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let bundle = bundle_dir(dir, "f32");

    // (w, h): one exact crop, landscape and portrait with padding, smaller than a 14 px patch,
    // 21 crops, past 36 crops (closest-grid path), an extreme strip, a single pixel.
    let sizes = [
        (448, 448),
        (500, 300),
        (300, 700),
        (10, 7),
        (3000, 1000),
        (4500, 1500),
        (2000, 30),
        (1, 1),
    ];
    let mut images = Vec::new();
    for (i, (w, h)) in sizes.into_iter().enumerate() {
        let p = dir.join(format!("img_{w}x{h}.png"));
        write_png(&p, w, h, 11 + i as u64);
        images.push(p);
    }
    for f in [
        "scene_420.jpg",
        "scene_422_progressive.jpg",
        "scene_gray.jpg",
    ] {
        images.push(fixture(f));
    }
    images.extend(write_png_variants(dir));
    let clips = [
        ("8k_mono_s16", 8000, 1, 1.3, Sample::I16),
        ("16k_mono_s16", 16000, 1, 2.1, Sample::I16),
        ("22k_stereo_s24", 22050, 2, 1.1, Sample::I24),
        ("44k_stereo_s16", 44100, 2, 1.7, Sample::I16),
        ("48k_mono_f32", 48000, 1, 2.5, Sample::F32),
        ("11k_mono_u8", 11025, 1, 0.9, Sample::U8),
    ];
    let mut audios = Vec::new();
    for (i, (name, rate, ch, secs, sample)) in clips.into_iter().enumerate() {
        let p = dir.join(format!("{name}.wav"));
        write_wav(&p, rate, ch, secs, sample, 101 + i as u64);
        audios.push(p);
    }

    let mut cases = Vec::new();
    for img in &images {
        let name = img.file_stem().unwrap().to_string_lossy().into_owned();
        cases.push(Case::new(
            &name,
            "<|user|><|image_1|>What is shown?<|end|><|assistant|>",
            vec![img.clone()],
            vec![],
        ));
    }
    for a in &audios {
        let name = a.file_stem().unwrap().to_string_lossy().into_owned();
        cases.push(Case::new(
            &name,
            "<|user|><|audio_1|>Transcribe the audio.<|end|><|assistant|>",
            vec![],
            vec![a.clone()],
        ));
    }
    // Several images and clips in one prompt: stacking pads crops and frames.
    cases.push(Case::new(
        "batch",
        "<|user|><|image_1|><|image_2|><|image_3|>Compare.<|audio_1|><|audio_2|>And these.<|end|><|assistant|>",
        vec![images[1].clone(), images[9].clone(), images[3].clone()],
        vec![audios[0].clone(), audios[4].clone()],
    ));
    // No placeholders: gemba puts them in front, images first, as ORT-GenAI's example does.
    let mut auto = Case::new(
        "auto_placeholders",
        "Describe both.",
        vec![images[1].clone()],
        vec![audios[1].clone()],
    );
    auto.reference_prompt = "<|image_1|>\n<|audio_1|>\nDescribe both.".into();
    cases.push(auto);
    cases.push(Case::new(
        "text_only",
        "<|user|>Hello there.<|end|><|assistant|>",
        vec![],
        vec![],
    ));

    let failures = check(&bundle, dir, &cases);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sessions that take fp16 / bf16: the same values, converted as ORT-GenAI converts them.
fn half_precision_case(float_type: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let bundle = bundle_dir(dir, float_type);
    let img = dir.join("img.png");
    write_png(&img, 700, 500, 5);
    let wav = dir.join("clip.wav");
    write_wav(&wav, 44100, 1, 1.2, Sample::I16, 6);
    let cases = [Case::new(
        float_type,
        "<|image_1|><|image_2|><|audio_1|>Both.",
        vec![img, fixture("scene_420.jpg")],
        vec![wav],
    )];
    let failures = check(&bundle, dir, &cases);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn preprocess_matches_ortgenai_with_fp16_inputs() {
    half_precision_case("f16");
}

#[test]
fn preprocess_matches_ortgenai_with_bf16_inputs() {
    half_precision_case("bf16");
}
