//! `gemba bench looks`: monitoring throughput with N cameras changing together, and the vision
//! warm-up.
//!
//! Throughput: every round each of N replay cameras shows its next frame (the bundle's
//! `frames/*.jpg`, decoded once, cycled); the looks are answered one at a time (one
//! `Engine::ask` per camera, as the daemon did) and together (`model::looks::ask_looks`: frames
//! pre-processed in parallel and encoded in one vision run), the two alternating round by round.
//! Looks per minute = N looks over the round's time; the greedy answers must be the same.
//!
//! Warm-up: the first look after loading against the later ones, with and without
//! `model::looks::warm_up` at load.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::capture::Frame;
use crate::daemon::worker::AskInput;
use crate::model::providers::ProviderPolicy;
use crate::model::runtime::Runtime;
use crate::model::speculate::Speculation;
use crate::model::{CancelToken, Engine, Event};

#[derive(Debug, Serialize)]
pub struct LooksBench {
    pub bundle: String,
    pub cameras: usize,
    pub threads: usize,
    pub rounds: usize,
    pub max_new_tokens: usize,
    pub vision_batched: bool,
    /// Looks per minute, median round.
    pub one_at_a_time_per_min: f64,
    pub together_per_min: f64,
    pub one_at_a_time_rounds: Vec<f64>,
    pub together_rounds: Vec<f64>,
    /// Looks whose greedy tokens were the same both ways (of cameras × rounds).
    pub same_answers: usize,
    /// Time to first token of the first look after loading, without and with the warm-up, and
    /// the median of the later looks (one at a time), in ms.
    pub first_look_cold_ms: f64,
    pub first_look_warmed_ms: f64,
    pub later_looks_ms: f64,
    pub warm_up_ms: f64,
}

impl std::fmt::Display for LooksBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "looks: {} ({} cameras changing together, {} threads, up to {} new tokens, median of {} alternating rounds; vision batched: {})",
            self.bundle, self.cameras, self.threads, self.max_new_tokens, self.rounds, self.vision_batched
        )?;
        writeln!(
            f,
            "one at a time: {:.0} looks/min; together: {:.0} looks/min ({:.2}×); same answers: {} of {}",
            self.one_at_a_time_per_min,
            self.together_per_min,
            self.together_per_min / self.one_at_a_time_per_min,
            self.same_answers,
            self.cameras * self.rounds
        )?;
        writeln!(
            f,
            "time to first token: first look after loading {:.1} ms without warm-up, {:.1} ms after it ({:.1} ms at load); later looks {:.1} ms",
            self.first_look_cold_ms, self.first_look_warmed_ms, self.warm_up_ms, self.later_looks_ms
        )
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// A decoded frame: width, height, RGB8.
type Decoded = (u32, u32, std::sync::Arc<Vec<u8>>);

/// The bundle's frames, decoded, as camera `cam-K`'s frame sequence.
fn frames(dir: &Path) -> Result<Vec<Decoded>> {
    let fdir = dir.join("frames");
    let mut files: Vec<_> = std::fs::read_dir(&fdir)
        .with_context(|| format!("reading {}", fdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no frames in {}", fdir.display());
    files
        .iter()
        .map(|p| {
            let img = crate::media::vision::load_image(p)?;
            Ok((
                img.width as u32,
                img.height as u32,
                std::sync::Arc::new(img.rgb),
            ))
        })
        .collect()
}

const QUESTION: &str = "Give me a status report.";
const SYSTEM: &str = "You watch a factory floor. Cite the camera you speak of as [cam:NAME].";

fn look(camera: usize, frame: &Decoded) -> AskInput {
    AskInput {
        text: QUESTION.into(),
        frames: vec![Frame {
            camera: format!("cam-{}", camera + 1),
            seq: 0,
            captured_at: std::time::SystemTime::now(),
            width: frame.0,
            height: frame.1,
            rgb: std::sync::Arc::clone(&frame.2),
        }],
        audio: Vec::new(),
    }
}

/// One look through [`Engine::ask`], greedy, with `speculation`: (tokens, time to first token
/// in ms).
fn one(
    engine: &mut Engine,
    input: &AskInput,
    max_new: usize,
    speculation: Speculation,
) -> Result<(Vec<u32>, f64)> {
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    params.max_new_tokens = Some(max_new);
    params.speculation = speculation;
    let mut ids = Vec::new();
    let done = engine.ask(
        input,
        Some(SYSTEM),
        &params,
        &CancelToken::new(),
        &mut |ev| {
            if let Event::Token(t) = ev {
                ids.push(t.id)
            }
        },
    )?;
    Ok((ids, done.time_to_first_token_ms))
}

pub fn run(
    rt: &Runtime,
    dir: &Path,
    cameras: usize,
    threads: usize,
    rounds: usize,
    max_new: usize,
) -> Result<LooksBench> {
    anyhow::ensure!(
        cameras >= 1 && rounds >= 1,
        "need --cameras >= 1, --repeat >= 1"
    );
    let policy = ProviderPolicy {
        intra_op_threads: Some(threads),
        ..Default::default()
    };
    let frames = frames(dir)?;
    // Warm-up: the first look of a fresh engine, without and with it.
    let mut engine = Engine::load(rt, dir, &policy)?;
    anyhow::ensure!(
        engine.sees(),
        "{}: the bundle takes no images",
        dir.display()
    );
    let (_, first_cold) = one(&mut engine, &look(0, &frames[0]), max_new, Speculation::OFF)?;
    drop(engine);
    let mut engine = Engine::load(rt, dir, &policy)?;
    let warm_up = crate::model::looks::warm_up(&mut engine)?;
    let (_, first_warmed) = one(&mut engine, &look(0, &frames[0]), max_new, Speculation::OFF)?;
    // Both ways with the same speed-ups (auto: what the daemon would use).
    let mut p = engine.default_params();
    engine.apply_speedups(
        &mut p,
        crate::model::exact::Switch::Auto,
        None,
        std::time::Duration::from_secs(600),
    );
    let (mut serial, mut together, mut later) = (Vec::new(), Vec::new(), Vec::new());
    let mut same = 0;
    for round in 0..rounds + 1 {
        // Every camera shows its next frame.
        let looks: Vec<AskInput> = (0..cameras)
            .map(|c| look(c, &frames[(round + c) % frames.len()]))
            .collect();
        // One at a time.
        let t0 = Instant::now();
        let mut a = Vec::new();
        for l in &looks {
            let (ids, ttft) = one(&mut engine, l, max_new, p.speculation)?;
            later.push(ttft);
            a.push(ids);
        }
        let t_serial = t0.elapsed().as_secs_f64();
        // Together.
        let mut params = engine.default_params();
        params.sampling.do_sample = false;
        params.max_new_tokens = Some(max_new);
        params.speculation = p.speculation;
        let mut b = vec![Vec::new(); cameras];
        let t0 = Instant::now();
        let prompts: Vec<crate::model::engine::Prompt<'_>> = looks.iter().map(Into::into).collect();
        let results = crate::model::looks::ask_looks(
            &mut engine,
            &prompts,
            Some(SYSTEM),
            &params,
            &CancelToken::new(),
            &mut |i, ev| {
                if let Event::Token(t) = ev {
                    b[i].push(t.id)
                }
            },
        );
        let t_together = t0.elapsed().as_secs_f64();
        for r in results {
            r?;
        }
        // Round 0 warms both ways up.
        if round > 0 {
            same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
            serial.push(cameras as f64 * 60.0 / t_serial);
            together.push(cameras as f64 * 60.0 / t_together);
        }
    }
    Ok(LooksBench {
        bundle: dir.display().to_string(),
        cameras,
        threads,
        rounds,
        max_new_tokens: max_new,
        vision_batched: crate::model::looks::batches_vision(&engine),
        one_at_a_time_per_min: median(&serial),
        together_per_min: median(&together),
        one_at_a_time_rounds: serial,
        together_rounds: together,
        same_answers: same,
        first_look_cold_ms: first_cold,
        first_look_warmed_ms: first_warmed,
        later_looks_ms: median(&later[cameras.min(later.len())..]),
        warm_up_ms: warm_up.as_secs_f64() * 1000.0,
    })
}
