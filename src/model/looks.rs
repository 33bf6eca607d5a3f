//! Camera looks: the warm-up at load, and several looks answered together with their frames
//! encoded in one vision run.
//!
//! [`warm_up`] runs one look on a blank frame (or a short text prompt for a text bundle) and the
//! exactness probe right after loading, so the first real look does not pay ONNX Runtime's
//! first-run costs (arena growth, thread pool start, kernel selection) or the probe.
//!
//! [`ask_looks`]: when looks of several cameras wait together, their frames are pre-processed
//! in parallel (one thread per frame; the processor takes `&self`), encoded in one vision run
//! (the frames stacked as `num_images`, padded to the largest crop count as a multi-image prompt
//! is) and the features split per frame by their token counts; then each look gets its own
//! embedding run and generation, one after another, each streaming its own events. A vision graph
//! whose batch dimension is fixed (not `num_images`) gets one run per frame instead: the same
//! answers, without the saving.
//!
//! In: looks ([`Prompt`]s with frames; no audio). Out: per look, events through the
//! callback (tagged with the look's index) and a `Result<Done>`; a failing look fails alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::value::{DynValue, Tensor, TensorElementType};

use super::engine::{Engine, Prompt, PromptImage};
use super::generate::{generate, CancelToken, Done, Event, GenerateError, GenerateParams};
use crate::media::processor::{ImageSource, ProcessedInputs};
use crate::media::vision::{ImageBatch, ImageInput};

/// Runs one look on a blank frame (a text prompt for a text bundle) and the exactness probe;
/// returns how long it took. What it leaves in the prefix cache is dropped.
pub fn warm_up(engine: &mut Engine) -> Result<Duration, GenerateError> {
    let t0 = Instant::now();
    engine.exactness();
    // A frame the size of a common camera's, mid-grey.
    let (w, h) = (640u32, 480u32);
    let rgb = vec![128u8; (w * h * 3) as usize];
    let input = Prompt {
        text: "What do you see?",
        images: if engine.sees() {
            vec![PromptImage {
                camera: "warm-up",
                width: w,
                height: h,
                rgb: &rgb,
            }]
        } else {
            Vec::new()
        },
        audio: Vec::new(),
    };
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    params.max_new_tokens = Some(2);
    engine.ask(input, None, &params, &CancelToken::new(), &mut |_| {})?;
    engine.decoder.prefix.clear();
    Ok(t0.elapsed())
}

/// Whether the bundle's vision graph takes several images in one run.
pub fn batches_vision(engine: &Engine) -> bool {
    engine
        .multimodal
        .as_ref()
        .and_then(|m| m.vision.as_ref())
        .is_some_and(|v| v.fixed_batch("pixel_values").is_none())
}

/// Rows `from..to` of `[n, hidden]` features.
fn feature_rows(v: &DynValue, from: usize, to: usize) -> Result<DynValue, GenerateError> {
    fn cut<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        v: &DynValue,
        from: usize,
        to: usize,
    ) -> ort::Result<DynValue> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        let h = shape.last().copied().unwrap_or(0).max(0) as usize;
        Ok(Tensor::from_array(([to - from, h], data[from * h..to * h].to_vec()))?.into_dyn())
    }
    let r = match v.dtype().tensor_type() {
        Some(TensorElementType::Float16) => cut::<half::f16>(v, from, to),
        Some(TensorElementType::Bfloat16) => cut::<half::bf16>(v, from, to),
        _ => cut::<f32>(v, from, to),
    };
    r.map_err(|e| GenerateError::Output {
        name: "image_features".into(),
        reason: format!("rows {from}..{to}: {e}"),
    })
}

/// Answers several looks: their frames encoded together where the vision graph allows it, then
/// one generation per look. `on_event` gets the look's index with each event. A text bundle, or
/// a look with audio, is answered through [`Engine::ask`] alone.
pub fn ask_looks(
    engine: &mut Engine,
    looks: &[Prompt<'_>],
    system: Option<&str>,
    params: &GenerateParams,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(usize, Event),
) -> Vec<Result<Done, GenerateError>> {
    let started = Instant::now();
    let mut params = params.clone();
    params.started.get_or_insert(started);
    if !engine.sees() || looks.iter().any(|l| !l.audio.is_empty()) {
        return looks
            .iter()
            .enumerate()
            .map(|(i, l)| {
                engine.ask(l.clone(), system, &params, cancel, &mut |ev| {
                    on_event(i, ev)
                })
            })
            .collect();
    }
    let features = match encode(engine, looks) {
        Ok(f) => f,
        Err(e) => {
            let why = e.to_string();
            return looks
                .iter()
                .map(|_| Err(GenerateError::Prompt(format!("vision: {why}"))))
                .collect();
        }
    };
    let mut out = Vec::with_capacity(looks.len());
    for (i, (look, (inputs, feats))) in looks.iter().zip(features).enumerate() {
        out.push(answer(
            engine,
            look,
            &inputs,
            feats,
            system,
            &params,
            cancel,
            &mut |ev| on_event(i, ev),
        ));
    }
    out
}

/// Per look: its pre-processed frames and their features (`None` without frames).
type Encoded = Vec<(Vec<Arc<ImageInput>>, Option<DynValue>)>;

fn encode(engine: &mut Engine, looks: &[Prompt<'_>]) -> Result<Encoded, GenerateError> {
    let batch = batches_vision(engine);
    let mm = engine.multimodal.as_mut().expect("checked: sees()");
    let settings = mm
        .processor
        .vision_settings()
        .cloned()
        .ok_or_else(|| GenerateError::Prompt("the bundle has no vision settings".into()))?;
    // Pre-processing (JPEG-free: RGB frames; resize, crops, normalisation) in parallel.
    let processor = &mm.processor;
    let per_look: Vec<Vec<Result<Arc<ImageInput>, String>>> = std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = looks
            .iter()
            .map(|l| {
                l.images
                    .iter()
                    .map(|f| {
                        s.spawn(move || {
                            processor
                                .process_image(ImageSource::Rgb {
                                    width: f.width as usize,
                                    height: f.height as usize,
                                    data: f.rgb,
                                    name: f.camera,
                                })
                                .map_err(|e| e.to_string())
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                    .collect()
            })
            .collect()
    });
    let mut inputs: Vec<Vec<Arc<ImageInput>>> = Vec::with_capacity(looks.len());
    for l in per_look {
        inputs.push(
            l.into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(GenerateError::Prompt)?,
        );
    }
    let dtypes = mm.dtypes();
    let vision = mm.vision.as_mut().expect("checked: sees()");
    let mut run = |images: &[Arc<ImageInput>]| -> Result<DynValue, GenerateError> {
        let p = ProcessedInputs {
            text: String::new(),
            input_ids: Vec::new(),
            images: Some(ImageBatch::stack(images, &settings)),
            audios: None,
            audio_projection_mode: 1,
        };
        let values: Vec<(&str, DynValue)> = p
            .into_tensors(dtypes)
            .iter()
            .map(|(n, t)| super::multimodal::to_value(t).map(|v| (*n, v)))
            .collect::<ort::Result<_>>()
            .map_err(|e| GenerateError::Prompt(format!("tensors: {e}")))?;
        vision.run(&values)
    };
    let all: Vec<Arc<ImageInput>> = inputs.iter().flatten().cloned().collect();
    let mut out = Vec::with_capacity(looks.len());
    if batch && !all.is_empty() {
        // One run for every frame of every look, then each look's rows.
        let feats = run(&all)?;
        let mut row = 0usize;
        for imgs in inputs {
            let n: usize = imgs.iter().map(|i| i.num_img_tokens as usize).sum();
            let f = if imgs.is_empty() {
                None
            } else {
                Some(feature_rows(&feats, row, row + n)?)
            };
            row += n;
            out.push((imgs, f));
        }
    } else {
        for imgs in inputs {
            let f = if imgs.is_empty() {
                None
            } else {
                Some(run(&imgs)?)
            };
            out.push((imgs, f));
        }
    }
    Ok(out)
}

/// One look's prompt, embedding and generation, from its encoded frames.
#[allow(clippy::too_many_arguments)]
fn answer(
    engine: &mut Engine,
    look: &Prompt<'_>,
    images: &[Arc<ImageInput>],
    features: Option<DynValue>,
    system: Option<&str>,
    params: &GenerateParams,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(Event),
) -> Result<Done, GenerateError> {
    let cameras: Vec<&str> = look.images.iter().map(|f| f.camera).collect();
    let content = Engine::user_content(look.text, &cameras, 0);
    let rendered = engine.render(&content, system, false)?;
    let mm = engine.multimodal.as_mut().expect("checked: sees()");
    let tokens: Vec<i64> = images.iter().map(|i| i.num_img_tokens).collect();
    let (_, ids) = mm
        .processor
        .expand_prompt(&rendered, &tokens, &[])
        .map_err(|e| GenerateError::Prompt(e.to_string()))?;
    let embeds = mm.embedding.run(&ids, features, None)?;
    let adapter = mm.adapter_for(images.len(), 0);
    engine.decoder.set_adapter(adapter)?;
    let reports = mm.reports();
    generate(
        &mut engine.decoder,
        &engine.bundle,
        super::generate::PromptInput::Embeds {
            ids: ids.iter().map(|&i| i as u32).collect(),
            embeds,
        },
        Some(&mut mm.embedding),
        params,
        cancel,
        &reports,
        on_event,
    )
}
