//! `gemba bench …`: performance against a peer measured in the same run.
//!
//! `decode` times prefill and decode tokens/s of three things on the same bundle, prompt length,
//! generated-token count and thread count:
//! - gemba's engine (the whole path a query takes: binding, sampler, detokenizer, splitter),
//! - ORT-GenAI (pip `onnxruntime-genai`, through scripts/bench/genai_decode.py) — the peer,
//! - a raw loop of decoder runs with everything pre-bound (KV buffers, masks, the next-token
//!   tensor written in place, argmax only) on gemba's own decoder session — the limit of what any
//!   runtime on this session can do.
//!
//! It prints the ratios gemba/ORT-GenAI and gemba's overhead over the raw loop.

mod constrained;
pub use constrained::{constrained, ConstrainedBench};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ort::memory::MemoryInfo;
use ort::value::{DynTensor, DynValue, Tensor};
use serde::Serialize;

use crate::model::bundle::{Bundle, DecoderIo, IntType, TokenInput};
use crate::model::providers::ProviderPolicy;
use crate::model::runtime::Runtime;
use crate::model::speculate::Speculation;
use crate::model::{CancelToken, Engine};

#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub prefill_s: Vec<f64>,
    pub decode_s: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

impl Speed {
    fn from_runs(prompt: usize, gen: usize, prefill: Vec<f64>, decode: Vec<f64>) -> Speed {
        Speed {
            prefill_tok_s: prompt as f64 / median(&prefill),
            decode_tok_s: (gen - 1) as f64 / median(&decode),
            prefill_s: prefill,
            decode_s: decode,
        }
    }
}

/// A fixed prompt of `n` ids (the content does not matter for speed; ids below 256 exist in
/// every byte-level vocabulary).
pub fn bench_prompt(n: usize) -> Vec<u32> {
    let mut x: u32 = 0x9E37_79B9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            32 + x % 200
        })
        .collect()
}

/// gemba's engine, forced to generate exactly `gen` tokens.
pub fn gemba_engine(
    engine: &mut Engine,
    prompt: &[u32],
    gen: usize,
    repeat: usize,
    warmup: usize,
) -> Result<Speed> {
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    // Plain decode, one decoder run per token and a full prefill every time: what the raw loop
    // and ORT-GenAI do (`--workload report` measures the speed-ups).
    params.speculation = Speculation::OFF;
    let limits = engine.decoder.prefix.limits;
    engine
        .decoder
        .prefix
        .set_limits(crate::model::prefix::PrefixLimits {
            max_bytes: 0,
            ..limits
        });
    params.max_new_tokens = Some(gen);
    params.min_length = prompt.len() + gen;
    params.max_length = params.max_length.max(prompt.len() + gen);
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for r in 0..warmup + repeat {
        let done =
            engine.generate_ids(prompt.to_vec(), &params, &CancelToken::new(), &mut |_| {})?;
        if done.generated_tokens != gen {
            bail!(
                "gemba generated {} tokens, expected {gen}",
                done.generated_tokens
            );
        }
        if r >= warmup {
            pre.push(done.prefill_ms / 1000.0);
            dec.push((gen - 1) as f64 / done.decode_tokens_per_s);
        }
    }
    engine.decoder.prefix.set_limits(limits);
    Ok(Speed::from_runs(prompt.len(), gen, pre, dec))
}

fn ids_tensor(ty: IntType, ids: &[i64]) -> ort::Result<DynValue> {
    let shape = [1i64, ids.len() as i64];
    Ok(match ty {
        IntType::I64 => Tensor::from_array((shape, ids.to_vec()))?.into_dyn(),
        IntType::I32 => {
            Tensor::from_array((shape, ids.iter().map(|&v| v as i32).collect::<Vec<_>>()))?
                .into_dyn()
        }
    })
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The limit: decoder runs with everything bound beforehand. Shared-buffer KV as the bundle says
/// (or presents handed to the next step without copies), masks for every length made before the
/// clock starts, the next token written into a bound tensor, argmax instead of a sampler.
///
/// It drives gemba's own decoder session, so that the two differ only in how they drive it. A
/// second session of the same model in the same process is not an equal peer: on a 2-core VM the
/// session created last decoded 4–8 % faster than one created before it, whichever loop drove
/// which (SmolLM2 int8; swapping their creation order swapped the sign), and that difference
/// would have been counted as gemba's overhead.
pub struct RawLoop {
    io: DecoderIo,
    share: bool,
}

impl RawLoop {
    /// A raw loop over `engine`'s decoder session.
    pub fn new(engine: &Engine, bundle: &Bundle) -> Result<RawLoop> {
        let file = bundle.file(&bundle.config.model.decoder.filename);
        let io = DecoderIo::from_session(&engine.decoder.session, &bundle.config, &file)?;
        Ok(RawLoop {
            io,
            share: bundle.config.search.past_present_share_buffer,
        })
    }

    /// One generation of exactly `gen` tokens; returns (prefill seconds, decode seconds).
    pub fn run(&mut self, engine: &mut Engine, prompt: &[u32], gen: usize) -> Result<(f64, f64)> {
        let session = &mut engine.decoder.session;
        let io = &self.io;
        let TokenInput::Ids {
            name: ids_name,
            ty: ids_ty,
        } = io.token.clone()
        else {
            bail!("the raw loop needs a decoder that takes input_ids");
        };
        let total = prompt.len() + gen;
        let cpu = MemoryInfo::default();
        let alloc = ort::memory::Allocator::default();
        let kv_shape = |seq: usize| [1i64, io.kv_heads as i64, seq as i64, io.head_size as i64];
        let mask_ty = io
            .attention_mask
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or(IntType::I64);
        let masks: Vec<DynValue> = (0..=total)
            .map(|n| ids_tensor(mask_ty, &vec![1i64; n]))
            .collect::<ort::Result<_>>()?;
        let positions: Vec<DynValue> = (0..total)
            .map(|p| ids_tensor(mask_ty, &[p as i64]))
            .collect::<ort::Result<_>>()?;
        let prompt_positions = ids_tensor(mask_ty, &(0..prompt.len() as i64).collect::<Vec<_>>())?;
        let prompt_ids = ids_tensor(
            ids_ty,
            &prompt.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        )?;
        let mut next = ids_tensor(ids_ty, &[0])?;
        let mut keys: Vec<DynTensor> = Vec::new();
        let mut values: Vec<DynTensor> = Vec::new();
        let mut pasts: Vec<DynValue> = Vec::new();
        let mut b = session.create_binding()?;
        for i in 0..io.layers {
            if self.share {
                keys.push(DynTensor::new(&alloc, io.kv_type.ort(), kv_shape(total))?);
                values.push(DynTensor::new(&alloc, io.kv_type.ort(), kv_shape(total))?);
                b.bind_input(io.past_key[i].as_str(), &keys[i])?;
                b.bind_input(io.past_value[i].as_str(), &values[i])?;
                b.bind_output(io.present_key[i].as_str(), keys[i].view_mut())?;
                b.bind_output(io.present_value[i].as_str(), values[i].view_mut())?;
            } else {
                pasts.push(DynTensor::new(&alloc, io.kv_type.ort(), kv_shape(0))?.into_dyn());
                pasts.push(DynTensor::new(&alloc, io.kv_type.ort(), kv_shape(0))?.into_dyn());
                b.bind_input(io.past_key[i].as_str(), &pasts[2 * i])?;
                b.bind_input(io.past_value[i].as_str(), &pasts[2 * i + 1])?;
            }
        }
        let t0 = Instant::now();
        let mut t_first = Duration::ZERO;
        for step in 0..gen {
            let past = if step == 0 {
                0
            } else {
                prompt.len() + step - 1
            };
            b.bind_input(
                ids_name.as_str(),
                if step == 0 { &prompt_ids } else { &next },
            )?;
            let n = if step == 0 { prompt.len() } else { 1 };
            if let Some((m, _)) = &io.attention_mask {
                b.bind_input(m.as_str(), &masks[past + n])?;
            }
            if let Some((p, _)) = &io.position_ids {
                b.bind_input(
                    p.as_str(),
                    if step == 0 {
                        &prompt_positions
                    } else {
                        &positions[past]
                    },
                )?;
            }
            b.bind_output_to_device(io.logits.as_str(), &cpu)?;
            if !self.share {
                for i in 0..io.layers {
                    b.bind_output_to_device(io.present_key[i].as_str(), &cpu)?;
                    b.bind_output_to_device(io.present_value[i].as_str(), &cpu)?;
                }
            }
            let mut out = session.run_binding(&b)?;
            let logits = out.remove(io.logits.as_str()).context("no logits")?;
            let mut fresh = Vec::new();
            if !self.share {
                for i in 0..io.layers {
                    fresh.push(
                        out.remove(io.present_key[i].as_str())
                            .context("no present")?,
                    );
                    fresh.push(
                        out.remove(io.present_value[i].as_str())
                            .context("no present")?,
                    );
                }
            }
            drop(out);
            if !self.share {
                pasts = fresh;
                for i in 0..io.layers {
                    b.bind_input(io.past_key[i].as_str(), &pasts[2 * i])?;
                    b.bind_input(io.past_value[i].as_str(), &pasts[2 * i + 1])?;
                }
            }
            let (shape, data) = logits.try_extract_tensor::<f32>()?;
            let vocab = shape[2] as usize;
            let tok = argmax(&data[data.len() - vocab..]) as i64;
            match ids_ty {
                IntType::I64 => next.try_extract_tensor_mut::<i64>()?.1[0] = tok,
                IntType::I32 => next.try_extract_tensor_mut::<i32>()?.1[0] = tok as i32,
            }
            if step == 0 {
                t_first = t0.elapsed();
            }
        }
        let t_end = t0.elapsed();
        Ok((t_first.as_secs_f64(), (t_end - t_first).as_secs_f64()))
    }
}

/// ORT-GenAI through scripts/bench/genai_decode.py and the project's venv.
/// ORT-GenAI as a peer process (scripts/bench/genai_decode.py --serve): the model is loaded and
/// warmed up once, then each [`GenaiPeer::run`] times one generation, so the caller can alternate
/// it with its own runs.
pub struct GenaiPeer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl GenaiPeer {
    pub fn start(bundle: &Path, prompt: usize, gen: usize, threads: usize) -> Result<GenaiPeer> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let py = root.join(".venv/bin/python");
        if !py.exists() {
            bail!(
                "{} is missing: run scripts/setup test (ORT-GenAI is the peer)",
                py.display()
            );
        }
        let mut child = std::process::Command::new(&py)
            .arg(root.join("scripts/bench/genai_decode.py"))
            .arg(bundle)
            .args([
                "--prompt-tokens",
                &prompt.to_string(),
                "--gen-tokens",
                &gen.to_string(),
            ])
            .args(["--threads", &threads.to_string(), "--serve"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting scripts/bench/genai_decode.py")?;
        let stdin = child.stdin.take().context("genai_decode.py stdin")?;
        let stdout =
            std::io::BufReader::new(child.stdout.take().context("genai_decode.py stdout")?);
        let mut peer = GenaiPeer {
            child,
            stdin,
            stdout,
        };
        let ready = peer.line()?;
        if ready["ready"] != serde_json::Value::Bool(true) {
            bail!("genai_decode.py: unexpected first line {ready}");
        }
        Ok(peer)
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!(
                "genai_decode.py stopped: {}",
                err.lines().last().unwrap_or("(no message)")
            );
        }
        serde_json::from_str(&line).with_context(|| format!("genai_decode.py printed {line:?}"))
    }

    /// One timed generation: (prefill seconds, decode seconds).
    pub fn run(&mut self) -> Result<(f64, f64)> {
        use std::io::Write;
        self.stdin.write_all(b"run\n")?;
        self.stdin.flush()?;
        let v = self.line()?;
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("genai_decode.py: no {k} in {v}"))
        };
        Ok((f("prefill_s")?, f("decode_s")?))
    }
}

impl Drop for GenaiPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Serialize)]
pub struct DecodeBench {
    pub bundle: String,
    pub onnxruntime: String,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub threads: usize,
    pub repeat: usize,
    pub share_buffer: bool,
    pub gemba: Speed,
    pub raw_loop: Speed,
    pub ort_genai: Option<Speed>,
    /// The gemba/ORT-GenAI decode ratio in each load order ([`LOAD_ORDERS`]).
    pub by_load_order: Vec<LoadOrderRatio>,
}

impl std::fmt::Display for DecodeBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decode bench: {} (ORT {}), prompt {} + {} generated tokens, {} threads, median of {}, shared KV buffer: {}",
            self.bundle, self.onnxruntime, self.prompt_tokens, self.gen_tokens, self.threads, self.repeat, self.share_buffer
        )?;
        writeln!(f, "{:<22}{:>16}{:>16}", "", "prefill tok/s", "decode tok/s")?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, s: &Speed| {
            writeln!(
                f,
                "{name:<22}{:>16.1}{:>16.1}",
                s.prefill_tok_s, s.decode_tok_s
            )
        };
        row(f, "raw loop (the limit)", &self.raw_loop)?;
        row(f, "gemba", &self.gemba)?;
        if let Some(g) = &self.ort_genai {
            row(f, "ORT-GenAI", g)?;
            writeln!(
                f,
                "gemba / ORT-GenAI:    prefill {:.3}×, decode {:.3}×",
                self.gemba.prefill_tok_s / g.prefill_tok_s,
                self.gemba.decode_tok_s / g.decode_tok_s
            )?;
            for o in &self.by_load_order {
                writeln!(f, "  decode, {}: {:.3}×", o.order, o.decode)?;
            }
        }
        writeln!(
            f,
            "gemba overhead over the raw loop: prefill {:+.2} %, decode {:+.2} %",
            (self.raw_loop.prefill_tok_s / self.gemba.prefill_tok_s - 1.0) * 100.0,
            (self.raw_loop.decode_tok_s / self.gemba.decode_tok_s - 1.0) * 100.0
        )
    }
}

/// Which contender loads its model first, alternated between the two halves of a bench that
/// has ORT-GenAI as its peer: gemba first, then ORT-GenAI first, each half with freshly loaded
/// models and half of the rounds.
///
/// On the 2-core VM the project is measured on, the contender that loaded first decoded 12–15 %
/// slower than it would have loaded second (SmolLM2 int8 decode, `gemba bench decode`: 0.87–0.90×
/// ORT-GenAI with gemba loading first, 1.06–1.16× with ORT-GenAI loading first; with 300 MB
/// allocated and touched before either loaded, 1.01–1.03×). Nothing in either runtime's code
/// changes with the order; what changes is the memory its weights land in (the VM hands back
/// pages through a balloon with free page reporting; the first process to allocate after the
/// previous run gets the pages its host reclaimed). Alternating the order gives each the same
/// handicap, and the per-order ratios are printed so the effect stays visible.
pub const LOAD_ORDERS: [&str; 2] = ["gemba loaded first", "ORT-GenAI loaded first"];

/// Loads gemba's engine and starts the peer in the order `peer_first` says.
fn load_in_order<P>(
    peer_first: bool,
    engine: impl FnOnce() -> Result<Engine>,
    peer: impl FnOnce() -> Result<Option<P>>,
) -> Result<(Engine, Option<P>)> {
    if peer_first {
        let p = peer()?;
        Ok((engine()?, p))
    } else {
        let e = engine()?;
        Ok((e, peer()?))
    }
}

/// Runs the three in the same process (gemba and the raw loop) and ORT-GenAI beside it.
pub fn decode(
    rt: &Runtime,
    dir: &Path,
    prompt_tokens: usize,
    gen: usize,
    threads: usize,
    repeat: usize,
    with_genai: bool,
) -> Result<DecodeBench> {
    let policy = ProviderPolicy {
        intra_op_threads: Some(threads),
        ..Default::default()
    };
    let prompt = bench_prompt(prompt_tokens);
    let bundle = Bundle::open(dir)?;
    let (mut gp, mut gd, mut rp, mut rd, mut op, mut od) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let orders: &[bool] = if with_genai { &[false, true] } else { &[false] };
    let rounds = repeat.div_ceil(orders.len());
    let mut by_order = Vec::new();
    for &peer_first in orders {
        let (mut engine, mut peer) = load_in_order(
            peer_first,
            || Ok(Engine::load(rt, dir, &policy)?),
            || {
                with_genai
                    .then(|| GenaiPeer::start(dir, prompt_tokens, gen, threads))
                    .transpose()
            },
        )?;
        let mut raw = RawLoop::new(&engine, &bundle)?;
        // Warm up, then alternate single runs (gemba, raw loop, ORT-GenAI) round by round: memory
        // bandwidth on a shared machine drifts by tens of percent over a minute, and run in
        // blocks one contender would get the good minute and another the bad one.
        gemba_engine(&mut engine, &prompt, gen, 0, 1)?;
        raw.run(&mut engine, &prompt, gen)?;
        let (mut half_g, mut half_o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            settle();
            let g = gemba_engine(&mut engine, &prompt, gen, 1, 0)?;
            gp.extend(g.prefill_s);
            gd.extend(&g.decode_s);
            half_g.extend(g.decode_s);
            settle();
            let (p, d) = raw.run(&mut engine, &prompt, gen)?;
            rp.push(p);
            rd.push(d);
            if let Some(peer) = peer.as_mut() {
                settle();
                let (p, d) = peer.run()?;
                op.push(p);
                od.push(d);
                half_o.push(d);
            }
        }
        if with_genai {
            by_order.push(LoadOrderRatio {
                order: LOAD_ORDERS[usize::from(peer_first)],
                decode: median(&half_o) / median(&half_g),
            });
        }
    }
    let ort_genai = with_genai.then(|| Speed::from_runs(prompt_tokens, gen, op, od));
    Ok(DecodeBench {
        bundle: dir.display().to_string(),
        onnxruntime: rt.version.clone(),
        prompt_tokens,
        gen_tokens: gen,
        threads,
        repeat: gd.len(),
        share_buffer: bundle.config.search.past_present_share_buffer,
        gemba: Speed::from_runs(prompt_tokens, gen, gp, gd),
        raw_loop: Speed::from_runs(prompt_tokens, gen, rp, rd),
        ort_genai,
        by_load_order: by_order,
    })
}

/// gemba's speed over ORT-GenAI's in the rounds of one load order.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOrderRatio {
    pub order: &'static str,
    /// gemba decode tokens/s over ORT-GenAI's (medians of that order's rounds).
    pub decode: f64,
}

/// One sample of a soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub t_s: f64,
    pub rss_mib: f64,
    pub open_fds: u64,
    pub reports: u64,
    pub requests: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub monitor_dropped: u64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub samples: Vec<SoakSample>,
    pub rss_first_mib: f64,
    pub rss_max_mib: f64,
    pub rss_last_mib: f64,
    /// Least-squares slope over the second half of the run (the first half includes warm-up).
    pub rss_slope_mib_per_hour: f64,
    pub fds_first: u64,
    pub fds_last: u64,
    pub reports: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub errors: u64,
    pub exit_ok: bool,
}

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Runs `gemba run` (the same binary) for `minutes` and samples its status.json counters.
pub fn soak(
    run_args: &[String],
    state_dir: &Path,
    minutes: f64,
    every: Duration,
    mut on_sample: impl FnMut(&SoakSample),
) -> Result<SoakReport> {
    let exe = std::env::current_exe().context("locating the gemba binary")?;
    let _ = std::fs::remove_file(crate::daemon::status::status_path(state_dir));
    let mut child = std::process::Command::new(exe)
        .arg("run")
        .args(run_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting gemba run")?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(
            every
                .min(end.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(100)),
        );
        if let Some(st) = child.try_wait()? {
            bail!("the daemon exited during the soak: {st}");
        }
        let Ok(Some(status)) = crate::daemon::status::read_status(state_dir) else {
            continue;
        };
        let Some(c) = status.counters else {
            continue;
        };
        let s = SoakSample {
            t_s: t0.elapsed().as_secs_f64(),
            rss_mib: c.rss_bytes as f64 / (1024.0 * 1024.0),
            open_fds: c.open_fds,
            reports: c.reports,
            requests: c.requests,
            frames: c.cameras.values().map(|x| x.frames).sum(),
            frames_dropped: c.cameras.values().map(|x| x.dropped).sum(),
            monitor_dropped: c.monitor_dropped,
            errors: c.errors,
        };
        on_sample(&s);
        samples.push(s);
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit_ok = child.wait().map(|s| s.success()).unwrap_or(false);
    let Some(first) = samples.first().cloned() else {
        bail!("no status.json counters were read from the daemon")
    };
    let last = samples.last().cloned().expect("non-empty");
    let half = samples.len() / 2;
    let tail: Vec<(f64, f64)> = samples[half..]
        .iter()
        .map(|s| (s.t_s / 3600.0, s.rss_mib))
        .collect();
    Ok(SoakReport {
        minutes,
        rss_first_mib: first.rss_mib,
        rss_max_mib: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        rss_last_mib: last.rss_mib,
        rss_slope_mib_per_hour: slope(&tail),
        fds_first: first.open_fds,
        fds_last: last.open_fds,
        reports: last.reports,
        frames: last.frames,
        frames_dropped: last.frames_dropped,
        errors: last.errors,
        exit_ok,
        samples,
    })
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak: {:.1} min, {} samples",
            self.minutes,
            self.samples.len()
        )?;
        writeln!(
            f,
            "RSS: {:.1} MiB first, {:.1} MiB max, {:.1} MiB last; trend over the second half {:+.2} MiB/hour",
            self.rss_first_mib, self.rss_max_mib, self.rss_last_mib, self.rss_slope_mib_per_hour
        )?;
        writeln!(
            f,
            "open fds: {} first, {} last",
            self.fds_first, self.fds_last
        )?;
        writeln!(
            f,
            "reports written: {}; frames captured: {} ({} replaced before use — keep-latest); errors: {}; clean exit on SIGTERM: {}",
            self.reports, self.frames, self.frames_dropped, self.errors, self.exit_ok
        )
    }
}

/// Time to first token / sentence and decode speed for a prompt with media (the omni path).
#[derive(Debug, Serialize)]
pub struct MediaBench {
    pub bundle: String,
    pub images: usize,
    pub audio: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub repeat: usize,
    pub time_to_first_token_ms: f64,
    pub time_to_first_sentence_ms: Option<f64>,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
    pub providers: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Display for MediaBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "omni bench: {} — {} image(s), {} audio clip(s); {} prompt tokens (placeholders expanded), {} generated; median of {}",
            self.bundle, self.images, self.audio, self.prompt_tokens, self.generated_tokens, self.repeat
        )?;
        writeln!(
            f,
            "time to first token {:.1} ms (pre-processing + encoders + prefill), first sentence {}, decode {:.1} tok/s, total {:.1} ms",
            self.time_to_first_token_ms,
            self.time_to_first_sentence_ms.map(|t| format!("{t:.1} ms")).unwrap_or_else(|| "-".into()),
            self.decode_tokens_per_s,
            self.total_ms
        )?;
        let p: Vec<String> = self
            .providers
            .iter()
            .map(|(c, p)| format!("{c}={p}"))
            .collect();
        writeln!(f, "providers: {}", p.join(" "))
    }
}

/// Runs `prompt` with image and audio files `repeat` times (after one warm-up) through the engine.
pub fn media(
    engine: &mut Engine,
    prompt: &str,
    media: &crate::model::engine::MediaFiles,
    max_new_tokens: usize,
    repeat: usize,
) -> Result<MediaBench> {
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    params.max_new_tokens = Some(max_new_tokens);
    let (mut ttft, mut ttfs, mut tps, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for r in 0..=repeat {
        // The engine's clock starts before pre-processing (decoding and pre-processing the
        // media, the encoders, prefill).
        let done = engine.ask_files(
            prompt,
            None,
            false,
            media,
            &params,
            &CancelToken::new(),
            &mut |_| {},
        )?;
        if r > 0 {
            ttft.push(done.time_to_first_token_ms);
            if let Some(s) = done.time_to_first_sentence_ms {
                ttfs.push(s);
            }
            tps.push(done.decode_tokens_per_s);
            total.push(done.total_ms);
        }
        last = Some(done);
    }
    let d = last.expect("ran");
    Ok(MediaBench {
        bundle: engine.bundle.dir.display().to_string(),
        images: media.images.len(),
        audio: media.audio.len(),
        prompt_tokens: d.prompt_tokens,
        generated_tokens: d.generated_tokens,
        repeat,
        time_to_first_token_ms: median(&ttft),
        time_to_first_sentence_ms: (!ttfs.is_empty()).then(|| median(&ttfs)),
        decode_tokens_per_s: median(&tps),
        total_ms: median(&total),
        providers: d.providers,
    })
}

/// The workload's system prompt, as a plant writes one: the assistant's role, the limits that
/// its reports check readings against, and the report's form.
pub const PLANT_SYSTEM_PROMPT: &str = "You are the monitoring assistant of a bottling plant. Write short factual status reports. Name each camera as [cam:NAME] and repeat the readings you rely on. The limits: press-2 pressure 3.5 to 5.0 bar, temperature at most 70 C, hydraulic oil level at least 60 %, lamp green while running, amber during a tool change, red at a fault; belt-1 at most 18 boxes on the belt, belt speed 0.6 to 1.0 m/s, no box tilted; line-3 fill level 495 to 505 ml, filler valves open only while filling, an operator present while the lamp is amber. Name every reading outside its limits first, with its limit, then the rest. End each report with one line: OK, CHECK or STOP.";

/// A one-sentence system prompt: the time to first token when only that is repeated.
pub const SHORT_SYSTEM_PROMPT: &str = "You are the monitoring assistant of a bottling plant. Write short factual status reports. Name each camera as [cam:NAME] and repeat the readings you rely on.";

/// Report-style prompts for `bench decode --workload report`: the demo's monitoring questions
/// over camera readings (reports repeat their prompt's names and figures) and a two-turn
/// conversation with a technician. Each is (system, user turns).
pub fn report_prompts() -> Vec<(Option<&'static str>, Vec<&'static str>)> {
    const SYSTEM: &str = PLANT_SYSTEM_PROMPT;
    vec![
        (Some(SYSTEM), vec!["Camera press-2 readings: pressure 4.2 bar, temperature 61 C, lamp green, hydraulic oil level 78 %. Camera press-2 readings one minute earlier: pressure 4.1 bar, temperature 60 C, lamp green, hydraulic oil level 78 %. Give me a status report."]),
        (Some(SYSTEM), vec!["Camera belt-1 readings: 14 boxes on the belt, belt speed 0.8 m/s, one box tilted at position 9. Camera belt-1 readings one minute earlier: 12 boxes on the belt, belt speed 0.8 m/s. How many boxes are on the belt? Give me a status report."]),
        (Some(SYSTEM), vec!["Camera line-3 readings: filler valve 3 open, fill level 498 ml, target 500 ml, lamp amber, operator present. Camera line-3 readings one minute earlier: filler valve 3 open, fill level 497 ml, lamp amber. Give me a status report."]),
        (Some(SYSTEM), vec!["Camera press-2 readings: pressure 5.6 bar, above the 5.0 bar limit, lamp red, temperature 74 C. Camera belt-1 readings: belt stopped, 20 boxes on the belt. Give me a status report for press-2 and belt-1."]),
        (
            Some(SYSTEM),
            vec![
                "Pump P-101 on line 3 reads 4.2 bar and the lamp on press-2 is amber. Is that normal?",
                "What should the technician check first on pump P-101 and press-2?",
            ],
        ),
    ]
}

/// One contender's totals over the workload's prompts for one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadRun {
    pub tokens: usize,
    pub decode_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSpeed {
    /// Tokens after each prompt's first, over the decode time summed over the prompts (median
    /// round).
    pub decode_tok_s: f64,
    pub tokens_per_round: usize,
    pub rounds: Vec<f64>,
}

impl WorkloadSpeed {
    fn from_runs(runs: &[WorkloadRun]) -> WorkloadSpeed {
        let rates: Vec<f64> = runs.iter().map(|r| r.tokens as f64 / r.decode_s).collect();
        WorkloadSpeed {
            decode_tok_s: median(&rates),
            tokens_per_round: runs.first().map_or(0, |r| r.tokens),
            rounds: rates,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TtftCase {
    pub name: String,
    pub prompt_tokens: usize,
    pub cold_ms: f64,
    pub warm_ms: f64,
    pub reused_tokens: usize,
    /// The first generated tokens are the same warm and cold.
    pub same_output: bool,
}

/// gemba's decode speed over ORT-GenAI's in the rounds of one load order.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadOrderRatio {
    pub order: &'static str,
    pub speculation_on: f64,
    pub speculation_off: f64,
}

#[derive(Debug, Serialize)]
pub struct WorkloadBench {
    pub bundle: String,
    pub onnxruntime: String,
    pub threads: usize,
    pub repeat: usize,
    pub prompts: usize,
    pub max_new_tokens: usize,
    pub gemba_speculative: WorkloadSpeed,
    /// Speculation with every draft verified whole (no tuner): what the tuner is measured
    /// against.
    pub gemba_fixed_drafts: WorkloadSpeed,
    pub gemba_plain: WorkloadSpeed,
    pub ort_genai: Option<WorkloadSpeed>,
    /// gemba/ORT-GenAI in each load order ([`LOAD_ORDERS`]).
    pub by_load_order: Vec<WorkloadOrderRatio>,
    pub accepted_drafts_per_round: usize,
    /// Prompts whose greedy tokens were the same with speculation on as off (of `prompts`).
    pub same_with_speculation: usize,
    /// What `auto` does on this bundle, and why (model::exact's probe).
    pub exactness: Vec<String>,
    /// The tuner's measured cost of a decode iteration by its rows, in one-row iterations, at
    /// the end of the last half: (rows, cost, iterations measured).
    pub tuner_costs: Vec<(usize, f64, u32)>,
    pub ttft: Vec<TtftCase>,
}

impl std::fmt::Display for WorkloadBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "report workload: {} (ORT {}), {} prompts, up to {} new tokens each, {} threads, median of {} alternating rounds",
            self.bundle, self.onnxruntime, self.prompts, self.max_new_tokens, self.threads, self.repeat
        )?;
        writeln!(f, "{:<34}{:>14}{:>10}", "", "decode tok/s", "tokens")?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, s: &WorkloadSpeed| {
            writeln!(
                f,
                "{name:<34}{:>14.1}{:>10}",
                s.decode_tok_s, s.tokens_per_round
            )
        };
        row(f, "gemba, speculation on", &self.gemba_speculative)?;
        row(
            f,
            "gemba, speculation, drafts whole",
            &self.gemba_fixed_drafts,
        )?;
        row(f, "gemba, speculation off", &self.gemba_plain)?;
        if let Some(g) = &self.ort_genai {
            row(f, "ORT-GenAI", g)?;
            writeln!(
                f,
                "gemba / ORT-GenAI: speculation on {:.2}×, off {:.2}×",
                self.gemba_speculative.decode_tok_s / g.decode_tok_s,
                self.gemba_plain.decode_tok_s / g.decode_tok_s
            )?;
            for o in &self.by_load_order {
                writeln!(
                    f,
                    "  {}: speculation on {:.2}×, off {:.2}×",
                    o.order, o.speculation_on, o.speculation_off
                )?;
            }
        }
        writeln!(
            f,
            "speculation on / off: {:.2}× ({} drafted tokens accepted per round; same greedy tokens on {} of {} prompts)",
            self.gemba_speculative.decode_tok_s / self.gemba_plain.decode_tok_s,
            self.accepted_drafts_per_round,
            self.same_with_speculation,
            self.prompts
        )?;
        writeln!(
            f,
            "speculation, tuned draft lengths / drafts whole: {:.2}×",
            self.gemba_speculative.decode_tok_s / self.gemba_fixed_drafts.decode_tok_s
        )?;
        if !self.tuner_costs.is_empty() {
            let costs: Vec<String> = self
                .tuner_costs
                .iter()
                .map(|(rows, c, n)| format!("{rows}: {c:.2} ({n})"))
                .collect();
            writeln!(
                f,
                "tuner, a decode iteration's cost by rows, in one-row iterations (times measured): {}",
                costs.join(", ")
            )?;
        }
        for l in &self.exactness {
            writeln!(f, "auto: {l}")?;
        }
        for t in &self.ttft {
            writeln!(
                f,
                "time to first token, {}: cold {:.1} ms, warm {:.1} ms ({:.2}× faster, {} of {} prompt tokens reused, same output: {})",
                t.name,
                t.cold_ms,
                t.warm_ms,
                t.cold_ms / t.warm_ms,
                t.reused_tokens,
                t.prompt_tokens,
                t.same_output
            )?;
        }
        Ok(())
    }
}

/// ORT-GenAI serving greedy generations from given ids (genai_decode.py --serve-ids).
struct GenaiIds(GenaiPeer);

impl GenaiIds {
    fn start(bundle: &Path, threads: usize) -> Result<GenaiIds> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let py = root.join(".venv/bin/python");
        if !py.exists() {
            bail!(
                "{} is missing: run scripts/setup test (ORT-GenAI is the peer)",
                py.display()
            );
        }
        let mut child = std::process::Command::new(&py)
            .arg(root.join("scripts/bench/genai_decode.py"))
            .arg(bundle)
            .args([
                "--prompt-tokens",
                "1",
                "--gen-tokens",
                "2",
                "--threads",
                &threads.to_string(),
                "--serve-ids",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting scripts/bench/genai_decode.py")?;
        let stdin = child.stdin.take().context("genai_decode.py stdin")?;
        let stdout =
            std::io::BufReader::new(child.stdout.take().context("genai_decode.py stdout")?);
        let mut peer = GenaiPeer {
            child,
            stdin,
            stdout,
        };
        let ready = peer.line()?;
        if ready["ready"] != serde_json::Value::Bool(true) {
            bail!("genai_decode.py: unexpected first line {ready}");
        }
        Ok(GenaiIds(peer))
    }

    /// (decode seconds, generated ids).
    fn run(&mut self, ids: &[u32], max_new: usize) -> Result<(f64, Vec<u32>)> {
        use std::io::Write;
        let req = serde_json::json!({"ids": ids, "max_new": max_new});
        writeln!(self.0.stdin, "{req}")?;
        self.0.stdin.flush()?;
        let v = self.0.line()?;
        let d = v["decode_s"]
            .as_f64()
            .with_context(|| format!("genai_decode.py: no decode_s in {v}"))?;
        let out: Vec<u32> = serde_json::from_value(v["ids"].clone())
            .with_context(|| format!("genai_decode.py: ids in {v}"))?;
        Ok((d, out))
    }
}

/// A pause before each contender's run: ONNX Runtime's idle intra-op threads spin for a while
/// after a run, so a run that starts right after another session's (ORT-GenAI's in its process,
/// the raw loop's in this one) shares the cores with that session's spinning pool. Without it,
/// whichever contender followed another lost up to a third of its speed on the demo's 10 ms
/// answers.
fn settle() {
    std::thread::sleep(Duration::from_millis(20));
}

/// One greedy generation through the engine: (ids, Done).
fn engine_run(
    engine: &mut Engine,
    ids: &[u32],
    max_new: usize,
    spec: Speculation,
) -> Result<(Vec<u32>, crate::model::Done)> {
    let mut params = engine.default_params();
    params.sampling.do_sample = false;
    params.max_new_tokens = Some(max_new);
    params.speculation = spec;
    let mut out = Vec::new();
    let done = engine.generate_ids(ids.to_vec(), &params, &CancelToken::new(), &mut |ev| {
        if let crate::model::Event::Token(t) = ev {
            out.push(t.id);
        }
    })?;
    Ok((out, done))
}

/// `bench decode --workload report`: decode tokens/s on report-style prompts (gemba with and
/// without speculation, ORT-GenAI on the same ids, alternating prompt by prompt), and time to
/// first token with a cached prefix (a repeated system prompt, a follow-up question) against a
/// cold prefill.
pub fn report_workload(
    rt: &Runtime,
    dir: &Path,
    max_new: usize,
    threads: usize,
    repeat: usize,
    with_genai: bool,
) -> Result<WorkloadBench> {
    use crate::model::tokenizer::ChatMessage;
    let policy = ProviderPolicy {
        intra_op_threads: Some(threads),
        ..Default::default()
    };
    let mut engine = Engine::load(rt, dir, &policy)?;
    let saved_limits = engine.decoder.prefix.limits;
    let off = crate::model::prefix::PrefixLimits {
        max_bytes: 0,
        ..saved_limits
    };
    // Decode is measured without prefix reuse (it only shortens the prefill).
    engine.decoder.prefix.set_limits(off);
    // Prompt ids: conversations get their earlier answers (gemba's greedy ones) in place.
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    let mut followup: Option<(Vec<u32>, Vec<u32>)> = None;
    for (system, turns) in report_prompts() {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.into(),
            });
        }
        let mut previous: Option<Vec<u32>> = None;
        for t in turns {
            messages.push(ChatMessage::user(t));
            let ids = engine.bundle.tokenizer.prompt_ids(&messages, false)?;
            let (_, done) = engine_run(&mut engine, &ids, max_new, Speculation::OFF)?;
            if let Some(p) = previous.take() {
                followup = Some((p, ids.clone()));
            }
            previous = Some(ids.clone());
            prompts.push(ids);
            messages.push(ChatMessage {
                role: "assistant".into(),
                content: done.text.trim().to_string(),
            });
        }
    }
    let (mut spec_runs, mut fixed_runs, mut plain_runs, mut genai_runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut accepted = 0;
    let mut same_prompts = 0;
    // Speculation as it ran before the tuner: every draft verified whole.
    let fixed_drafts = Speculation {
        tuned: false,
        ..Speculation::default()
    };
    // The load order alternates between halves (LOAD_ORDERS); the prompts above came from the
    // first half's engine.
    let orders: &[bool] = if with_genai { &[false, true] } else { &[false] };
    let rounds = repeat.div_ceil(orders.len());
    let start_peer = || {
        with_genai
            .then(|| GenaiIds::start(dir, threads))
            .transpose()
    };
    let mut peer = None;
    let mut by_order = Vec::new();
    for (half, &peer_first) in orders.iter().enumerate() {
        if half == 0 {
            peer = start_peer()?;
        } else {
            drop(peer.take());
            drop(engine);
            let (e, p) = load_in_order(
                peer_first,
                || Ok(Engine::load(rt, dir, &policy)?),
                start_peer,
            )?;
            engine = e;
            peer = p;
            engine.decoder.prefix.set_limits(off);
        }
        let first = spec_runs.len();
        for round in 0..rounds + 1 {
            let (mut s, mut x, mut p, mut g) = (
                WorkloadRun::default(),
                WorkloadRun::default(),
                WorkloadRun::default(),
                WorkloadRun::default(),
            );
            accepted = 0;
            same_prompts = 0;
            for ids in &prompts {
                settle();
                let (a, da) = engine_run(&mut engine, ids, max_new, Speculation::default())?;
                settle();
                let (c, dc) = engine_run(&mut engine, ids, max_new, fixed_drafts)?;
                settle();
                let (b, db) = engine_run(&mut engine, ids, max_new, Speculation::OFF)?;
                // Where the probe finds verify runs inexact, a near-tie may flip: counted, shown.
                same_prompts += usize::from(a == b);
                accepted += da.accepted_drafts;
                let secs = |d: &crate::model::Done| {
                    if d.decode_tokens_per_s > 0.0 {
                        (d.generated_tokens - 1) as f64 / d.decode_tokens_per_s
                    } else {
                        0.0
                    }
                };
                s.tokens += a.len() - 1;
                s.decode_s += secs(&da);
                x.tokens += c.len() - 1;
                x.decode_s += secs(&dc);
                p.tokens += b.len() - 1;
                p.decode_s += secs(&db);
                if let Some(peer) = peer.as_mut() {
                    settle();
                    let (d, out) = peer.run(ids, max_new)?;
                    g.tokens += out.len().saturating_sub(1);
                    g.decode_s += d;
                }
            }
            // Round 0 warms every contender up.
            if round > 0 {
                spec_runs.push(s);
                fixed_runs.push(x);
                plain_runs.push(p);
                genai_runs.push(g);
            }
        }
        if with_genai {
            let g = WorkloadSpeed::from_runs(&genai_runs[first..]).decode_tok_s;
            by_order.push(WorkloadOrderRatio {
                order: LOAD_ORDERS[usize::from(peer_first)],
                speculation_on: WorkloadSpeed::from_runs(&spec_runs[first..]).decode_tok_s / g,
                speculation_off: WorkloadSpeed::from_runs(&plain_runs[first..]).decode_tok_s / g,
            });
        }
    }
    drop(peer);
    // Time to first token: a prompt that repeats the system prompt of the one before, and a
    // follow-up question after its conversation; cold = the cache emptied before.
    engine
        .decoder
        .prefix
        .set_limits(crate::model::prefix::PrefixLimits::default());
    let mut ttft = Vec::new();
    let tok = &engine.bundle.tokenizer;
    // The first user turn of prompt `i` after `system`.
    let first_user = |i: usize, system: &str| -> Result<Vec<u32>> {
        let m = [
            ChatMessage {
                role: "system".into(),
                content: system.into(),
            },
            ChatMessage::user(report_prompts()[i].1[0]),
        ];
        Ok(tok.prompt_ids(&m, false)?)
    };
    let mut cases: Vec<(String, Vec<u32>, Vec<u32>)> = Vec::new();
    for (name, system) in [
        ("repeated system prompt", PLANT_SYSTEM_PROMPT),
        ("repeated one-sentence system prompt", SHORT_SYSTEM_PROMPT),
    ] {
        cases.push((name.into(), first_user(0, system)?, first_user(1, system)?));
    }
    if let Some((before, after)) = followup {
        cases.push(("follow-up question".into(), before, after));
    }
    for (name, before, prompt) in cases {
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let (mut same, mut reused) = (true, 0);
        for _ in 0..repeat {
            engine.decoder.prefix.clear();
            let (c, dc) = engine_run(&mut engine, &prompt, 8, Speculation::OFF)?;
            engine.decoder.prefix.clear();
            engine_run(&mut engine, &before, max_new, Speculation::OFF)?;
            let (w, dw) = engine_run(&mut engine, &prompt, 8, Speculation::OFF)?;
            cold.push(dc.time_to_first_token_ms);
            warm.push(dw.time_to_first_token_ms);
            same &= c == w;
            reused = dw.reused_prefix_tokens;
        }
        ttft.push(TtftCase {
            name,
            prompt_tokens: prompt.len(),
            cold_ms: median(&cold),
            warm_ms: median(&warm),
            reused_tokens: reused,
            same_output: same,
        });
    }
    Ok(WorkloadBench {
        bundle: dir.display().to_string(),
        onnxruntime: rt.version.clone(),
        threads,
        repeat: spec_runs.len(),
        prompts: prompts.len(),
        max_new_tokens: max_new,
        gemba_speculative: WorkloadSpeed::from_runs(&spec_runs),
        gemba_fixed_drafts: WorkloadSpeed::from_runs(&fixed_runs),
        gemba_plain: WorkloadSpeed::from_runs(&plain_runs),
        ort_genai: with_genai.then(|| WorkloadSpeed::from_runs(&genai_runs)),
        by_load_order: by_order,
        accepted_drafts_per_round: accepted,
        same_with_speculation: same_prompts,
        exactness: engine.exactness().lines(),
        tuner_costs: engine.decoder.tuner.costs(),
        ttft,
    })
}
