//! The `gemba` command: parse, call into the library, print, pick the exit code.
//!
//! Errors are printed as one line (`gemba: error: …` with the cause chain joined by `: `) and
//! exit non-zero; a panic anywhere is a bug, so the panic hook prints one line too, without a
//! backtrace unless `RUST_BACKTRACE` asks for one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use gemba::model::providers::ProviderPolicy;
use gemba::model::{runtime, CancelToken, Engine, Event};

#[derive(Parser)]
#[command(
    name = "gemba",
    version,
    about = "An omni-modal model on the factory floor"
)]
struct Cli {
    /// ONNX Runtime shared library (default: ORT_DYLIB_PATH, then scripts/setup's .ort/, then system places).
    #[arg(long, global = true, value_name = "PATH")]
    onnxruntime: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch the cameras, ask the model, write reports.
    Run(RunCmd),
    /// Check a config file (merged over its board profile) and print the settings.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Ask the model once; prints each sentence as soon as it is final.
    Ask(AskArgs),
    /// Write the input tensors a phi4mm bundle's sessions would receive to an .npz file.
    Preprocess(gemba::model::preprocess::PreprocessArgs),
    /// What this machine can run, and what a bundle runs on.
    Doctor(DoctorArgs),
    /// Reports in the store: list, show, html, export.
    Report {
        /// The report store (default: the config's data_dir).
        #[arg(long, alias = "data-dir", env = "GEMBA_DATA_DIR", value_name = "DIR")]
        data: Option<PathBuf>,
        /// The config whose data_dir to use (default /etc/gemba/gemba.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: gemba::report::ReportCommand,
    },
    /// Benchmarks against a peer measured in the same run.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Signed model bundles: keygen, pack, install (verify, smoke, switch, health gate, rollback), list, status, gc.
    Model(gemba::update::cli::ModelArgs),
    /// Boards seen on an MQTT broker (docs/mqtt.md).
    #[command(subcommand)]
    Fleet(gemba::publish::fleet::FleetCommand),
    /// Conformance helpers (same JSON as tests/conformance/genai_greedy.py).
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
}

#[derive(Args)]
struct RunCmd {
    /// The config file (default /etc/gemba/gemba.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run the built-in demo: replay cameras over demo frames, the demo model, store ./gemba-demo.
    #[arg(long)]
    demo: bool,
    /// The report store (default: the config's data_dir; ./gemba-demo with --demo).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Serve the local API on IP:PORT instead of the config's `[api] listen` (port 0: any free).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Stop by itself after this long (e.g. 90s), as on SIGTERM.
    #[arg(long, value_parser = gemba::sys::duration::parse, value_name = "DURATION")]
    stop_after: Option<Duration>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate FILE; print the effective settings as JSON, or the error with file and key.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Runs the daemon for N minutes and reports RSS over time, open fds, reports and drops.
    Soak {
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Daemon config (default: the built-in demo).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The store (and status.json) directory (default: a fresh temporary one).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Sampling period (e.g. 10s).
        #[arg(long, value_parser = gemba::sys::duration::parse, default_value = "10s")]
        every: Duration,
        #[arg(long)]
        json: bool,
    },
    /// End of a spoken question → first sentence → first audio sample, against the engine alone.
    Voice {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// The question, spoken by espeak-ng.
        #[arg(long, default_value = "What colour is the lamp?")]
        question: String,
        /// A camera image to ask about (default: a grey frame).
        #[arg(long, value_name = "IMAGE")]
        frame: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
    /// Image and audio pre-processing time, against ORT-GenAI's processor on the same inputs.
    Preprocess(gemba::model::preprocess::BenchPreprocessArgs),
    /// Monitoring throughput: looks per minute with N cameras changing together (frames encoded
    /// in one vision run) against one look at a time; the first look with and without warm-up.
    Looks {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        cameras: usize,
        /// Intra-op threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long, default_value_t = 48)]
        max_tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode tokens/s: gemba vs ORT-GenAI vs a raw pre-bound decoder loop.
    Decode {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Intra-op threads for every contender (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Skip ORT-GenAI (e.g. on a board without Python).
        #[arg(long)]
        no_genai: bool,
        /// `report`: report-style prompts (monitoring questions, a two-turn conversation) with
        /// speculation on and off against ORT-GenAI, and time to first token with a cached
        /// prefix (repeated system prompt, follow-up question) against a cold prefill.
        #[arg(long, value_name = "NAME")]
        workload: Option<String>,
        /// Instead: time a prompt with these images (repeatable) through the omni path
        /// (pre-processing, encoders, prefill): time to first token / sentence, tokens/s.
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
        /// … and/or these audio clips.
        #[arg(long = "audio", value_name = "FILE")]
        audio: Vec<PathBuf>,
        /// The question for --image/--audio runs (and for a constrained run).
        #[arg(long, default_value = "Give me a status report.")]
        prompt: String,
        /// Instead: the token mask's cost — decode with this constraint against the same engine
        /// unconstrained, forced to as many tokens, alternating round by round.
        #[command(flatten)]
        format: FormatArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Greedy generation from prompt ids: CASES_JSON as genai_greedy.py's `greedy` mode.
    Greedy { cases: PathBuf },
    /// Tokenize prompts plain and with the chat template.
    Tokenize { bundle: PathBuf, prompts: PathBuf },
    /// Greedy generation from templated prompts with image/audio files (genai_mm_greedy.py's JSON).
    GreedyMm { cases: PathBuf },
}

#[derive(Args)]
struct AskArgs {
    /// The model bundle directory (genai_config.json + ONNX + tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Stop after this many generated tokens.
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Skip the chat template: tokenize the prompt as it is.
    #[arg(long)]
    raw: bool,
    /// Print the events (token, sentence, done) as JSON lines.
    #[arg(long)]
    json: bool,
    /// A system message (through the chat template).
    #[arg(long)]
    system: Option<String>,
    /// Sample instead of greedy search.
    #[arg(long)]
    sample: bool,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// An image for the model (JPEG or PNG; repeatable). Placeholders `<|image_N|>` in the prompt
    /// place them; without any, they go before the text.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// An audio clip for the model (WAV, any rate; repeatable), placed by `<|audio_N|>`.
    #[arg(long = "audio", value_name = "FILE")]
    audio: Vec<PathBuf>,
    /// Stop when the reply contains this text (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Give up after this long (e.g. 30s, 2m); a running step is terminated.
    #[arg(long, value_parser = gemba::sys::duration::parse)]
    deadline: Option<Duration>,
    /// Prompt-lookup speculative decoding: drafts from the prompt verified in one decoder run
    /// (faster on answers that repeat their prompt). Default: on where the bundle's greedy output
    /// stays exact (`gemba doctor --model` says), else off; this turns it on anyway.
    #[arg(long, conflicts_with = "no_speculate")]
    speculate: bool,
    /// No speculative decoding, whatever the bundle allows.
    #[arg(long)]
    no_speculate: bool,
    /// Write the region crops the reply cites (`[cam:NAME box:x0,y0,x1,y1]`) into DIR (created
    /// if missing; new names only, nothing there is overwritten). An --image answers to the
    /// camera name of its file name (`press-2_00.jpg` → `press-2`).
    #[arg(long, value_name = "DIR", requires = "images")]
    crops: Option<PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
    #[command(flatten)]
    providers: ProviderArgs,
    #[command(flatten)]
    speech: SpeechArgs,
    /// The question.
    prompt: String,
}

#[derive(Args)]
struct SpeechArgs {
    /// Speak the answer, sentence by sentence as it is generated, on the default sound output.
    #[arg(long)]
    speak: bool,
    /// Speak the answer into this WAV file instead (16-bit mono).
    #[arg(long, value_name = "FILE.wav")]
    speak_to: Option<PathBuf>,
    /// espeak-ng voice (default en-us).
    #[arg(long, value_name = "VOICE")]
    espeak_voice: Option<String>,
    /// Speak with this Piper voice (model.onnx, with model.onnx.json beside it) instead of espeak-ng.
    #[arg(long, value_name = "MODEL.onnx")]
    piper: Option<PathBuf>,
}

impl SpeechArgs {
    /// The speaker for `ask`, if one was asked for.
    fn open(&self) -> Result<Option<gemba::voice::Speech>> {
        use gemba::voice::output::OutputTarget;
        use gemba::voice::tts::TtsSettings;
        let target = match (&self.speak_to, self.speak) {
            (Some(p), _) => OutputTarget::File {
                path: p.clone(),
                paced: false,
                rate: None,
            },
            (None, true) => OutputTarget::Device {
                device: "default".into(),
                format: gemba::capture::mic::SampleFormat::I16,
                rate: 22_050,
                channels: 1,
            },
            (None, false) => return Ok(None),
        };
        let tts = match &self.piper {
            Some(m) => TtsSettings::Piper {
                model: m.clone(),
                speaker: None,
                espeak_voice: self.espeak_voice.clone(),
            },
            None => TtsSettings::EspeakNg {
                voice: self.espeak_voice.clone().unwrap_or_else(|| "en-us".into()),
                speed: 175,
            },
        };
        Ok(Some(gemba::voice::Speech::open(
            &target,
            &tts,
            runtime::get(),
        )?))
    }
}

#[derive(Args)]
struct ProviderArgs {
    /// Provider order for every component, e.g. `cuda,cpu` (overrides the bundle).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    providers: Option<Vec<gemba::model::providers::ProviderKind>>,
    /// Fail instead of falling back when a provider cannot be used.
    #[arg(long)]
    strict_providers: bool,
    /// Intra-op threads per session.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl ProviderArgs {
    fn policy(&self) -> ProviderPolicy {
        ProviderPolicy {
            order: self.providers.clone(),
            strict: self.strict_providers,
            intra_op_threads: self.threads,
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct DoctorArgs {
    /// Also load this bundle and show the provider each component runs on.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    providers: ProviderArgs,
}

/// glibc gives every freed block over 128 KiB (its starting mmap threshold) back to the kernel
/// and trims the heap above 128 KiB of free space, so the per-frame buffers of image
/// pre-processing (a decoded frame, the HD canvas, the crops: 2–60 MB) were mapped and
/// page-faulted in anew for every frame — 40–60 % of pre-processing time (`gemba bench
/// preprocess`: 640×480 22.7 → 13.7 ms, 1080p 120 → 70 ms). Blocks under 64 MiB now come from the
/// heap, and up to 256 MiB of freed heap is kept for the next frame: the resident size stays at
/// its high-water mark instead of falling back between frames. `MALLOC_MMAP_THRESHOLD_` /
/// `MALLOC_TRIM_THRESHOLD_` in the environment (glibc's own knobs) still win.
fn keep_frame_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |name: &str| std::env::var_os(name).is_some();
        // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
        unsafe {
            if !set("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            }
            if !set("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            }
        }
    }
}

fn main() -> ExitCode {
    keep_frame_buffers_mapped();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("gemba: internal error (a bug, please report it): {msg}{loc}");
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("gemba: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    gemba::systemd::init_logging(level);
    // Under the journal ort's `tracing` events reach it as log records (tracing's `log`
    // feature, used when no subscriber is installed); elsewhere they print on stderr.
    if verbose > 0 && !systemd_journal_logger::connected_to_journal() {
        // ort reports through `tracing`; show its messages too when asked.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(if verbose > 1 {
                "ort=debug"
            } else {
                "ort=info"
            }))
            .try_init();
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ask(a) => ask(cli.onnxruntime, a),
        Command::Preprocess(args) => {
            gemba::model::preprocess::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCmd::Soak {
            minutes,
            config,
            data,
            every,
            json,
        }) => {
            let tmp;
            let data = match data {
                Some(d) => d,
                None => {
                    tmp = std::env::temp_dir().join(format!("gemba-soak-{}", std::process::id()));
                    tmp.clone()
                }
            };
            let mut args: Vec<String> = match &config {
                Some(c) => vec!["--config".into(), c.display().to_string()],
                None => vec!["--demo".into()],
            };
            args.extend(["--data".into(), data.display().to_string()]);
            if let Some(o) = &cli.onnxruntime {
                args.splice(0..0, ["--onnxruntime".to_string(), o.display().to_string()]);
            }
            eprintln!(
                "{:>8} {:>9} {:>5} {:>8} {:>9} {:>9} {:>7}",
                "t (s)", "RSS MiB", "fds", "reports", "frames", "dropped", "errors"
            );
            let r = gemba::bench::soak(&args, &data, minutes, every, |s| {
                eprintln!(
                    "{:>8.0} {:>9.1} {:>5} {:>8} {:>9} {:>9} {:>7}",
                    s.t_s, s.rss_mib, s.open_fds, s.reports, s.frames, s.frames_dropped, s.errors
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCmd::Preprocess(args)) => {
            gemba::model::preprocess::run_bench(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(r) => {
            let args = gemba::daemon::RunArgs {
                config: r.config,
                demo: r.demo,
                data: r.data,
                onnxruntime: cli.onnxruntime,
                stop_after: r.stop_after,
                listen: r.listen,
            };
            gemba::daemon::main(args, gemba::daemon::stop_signals())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCmd::Check { file }) => {
            let s = gemba::config::Settings::load(&file)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Model(m) => {
            // The config's [update] section and providers, when a config is there.
            let cfg = std::env::var_os("GEMBA_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(gemba::config::DEFAULT_CONFIG));
            let (update, policy) = if cfg.exists() {
                let s = gemba::config::Settings::load(&cfg)?;
                (s.update, s.providers)
            } else {
                (
                    gemba::update::UpdateConfig::default(),
                    ProviderPolicy::default(),
                )
            };
            gemba::update::cli::run(m, update, policy, cli.onnxruntime.as_deref())
        }
        Command::Bench(BenchCmd::Voice {
            model,
            question,
            frame,
            repeat,
            json,
        }) => {
            let rt = runtime::init(cli.onnxruntime.as_deref())?;
            let r =
                gemba::voice::bench::run(rt, &model, &question, frame.as_deref(), repeat.max(1))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCmd::Looks {
            model,
            cameras,
            threads,
            repeat,
            max_tokens,
            json,
        }) => {
            let rt = runtime::init(cli.onnxruntime.as_deref())?;
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let r = gemba::bench_looks::run(rt, &model, cameras, threads, repeat, max_tokens)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCmd::Decode {
            model,
            prompt_tokens,
            gen_tokens,
            threads,
            repeat,
            no_genai,
            workload,
            images,
            audio,
            prompt,
            format,
            json,
        }) => {
            let rt = runtime::init(cli.onnxruntime.as_deref())?;
            let constraint = format.format()?;
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            if let Some(w) = workload {
                anyhow::ensure!(
                    w == "report",
                    "--workload {w}: the only workload is `report`"
                );
                anyhow::ensure!(
                    gen_tokens >= 2 && repeat >= 1,
                    "need --gen-tokens >= 2, --repeat >= 1"
                );
                let r = gemba::bench::report_workload(
                    rt, &model, gen_tokens, threads, repeat, !no_genai,
                )?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{r}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(f) = constraint {
                anyhow::ensure!(repeat >= 1, "need --repeat >= 1");
                let r =
                    gemba::bench::constrained(rt, &model, &f, &prompt, gen_tokens, threads, repeat)
                        .with_context(|| format.describe())?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{r}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !images.is_empty() || !audio.is_empty() {
                let policy = ProviderPolicy {
                    intra_op_threads: Some(threads),
                    ..Default::default()
                };
                let mut engine = Engine::load(rt, &model, &policy)?;
                let media = gemba::model::engine::MediaFiles { images, audio };
                let r = gemba::bench::media(&mut engine, &prompt, &media, gen_tokens, repeat)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{r}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::ensure!(
                gen_tokens >= 2 && repeat >= 1 && prompt_tokens >= 1,
                "need --gen-tokens >= 2, --repeat >= 1, --prompt-tokens >= 1"
            );
            let r = gemba::bench::decode(
                rt,
                &model,
                prompt_tokens,
                gen_tokens,
                threads,
                repeat,
                !no_genai,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { data, config, cmd } => {
            let dir = match data {
                Some(d) => d,
                None => store_from_config(config)?,
            };
            gemba::report::run_report_command(&dir, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCmd::Greedy { cases }) => {
            println!(
                "{}",
                gemba::conformance::greedy(cli.onnxruntime.as_deref(), &cases)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCmd::GreedyMm { cases }) => {
            println!(
                "{}",
                gemba::conformance::greedy_multimodal(cli.onnxruntime.as_deref(), &cases)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug(DebugCmd::Tokenize { bundle, prompts }) => {
            println!("{}", gemba::conformance::tokenize(&bundle, &prompts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet(f) => {
            gemba::publish::fleet::run_fleet_command(f)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(d) => {
            let report = gemba::doctor::examine(
                cli.onnxruntime.as_deref(),
                d.model.as_deref(),
                &d.providers.policy(),
            );
            if d.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            let ok = report.onnxruntime.error.is_none() && report.bundle_error.is_none();
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The store directory named by a config file (explicit, or the default one when it exists).
fn store_from_config(config: Option<PathBuf>) -> Result<PathBuf> {
    let path = config.unwrap_or_else(|| PathBuf::from(gemba::config::DEFAULT_CONFIG));
    if !path.exists() {
        anyhow::bail!("no report store given: pass --data DIR, or --config FILE with a data_dir ({} does not exist)", path.display());
    }
    Ok(gemba::config::Settings::load(&path)?.data_dir)
}

/// `ask --crops`: the --image files as frames named after their files.
fn ask_crops(dir: &Path, images: &[PathBuf]) -> Result<gemba::report::crop::ReplyCrops> {
    use gemba::report::crop::{camera_of_file, CropFrame, ReplyCrops};
    let mut frames = Vec::new();
    for path in images {
        let img = gemba::media::vision::load_image(path)
            .with_context(|| format!("--crops: reading --image {}", path.display()))?;
        frames.push(CropFrame {
            camera: camera_of_file(path),
            width: img.width as u32,
            height: img.height as u32,
            rgb: img.rgb,
        });
    }
    ReplyCrops::new(dir, frames).context("--crops")
}

/// Constrained decoding: what the answer must look like (at most one of these).
#[derive(Debug, Clone, clap::Args)]
struct FormatArgs {
    /// The answer is a JSON document valid under the JSON schema in FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["choice", "regex"])]
    json_schema: Option<PathBuf>,
    /// The answer is exactly one of these (comma-separated).
    #[arg(
        long,
        value_name = "A,B,C",
        value_delimiter = ',',
        conflicts_with = "regex"
    )]
    choice: Option<Vec<String>>,
    /// The answer is a full match of this regular expression.
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
}

impl FormatArgs {
    fn format(&self) -> Result<Option<gemba::model::constrain::ResponseFormat>> {
        Ok(gemba::model::constrain::ResponseFormat::from_cli(
            self.json_schema.as_deref(),
            self.choice.clone(),
            self.regex.clone(),
        )?)
    }

    /// Which option gave the format, for error messages.
    fn describe(&self) -> String {
        match (&self.json_schema, &self.choice) {
            (Some(p), _) => format!("--json-schema {}", p.display()),
            (None, Some(c)) => format!("--choice {}", c.join(",")),
            (None, None) => format!("--regex {:?}", self.regex.as_deref().unwrap_or("")),
        }
    }
}

fn ask(ort: Option<PathBuf>, a: AskArgs) -> Result<ExitCode> {
    let format = a.format.format()?;
    let rt = runtime::init(ort.as_deref())?;
    let mut engine = Engine::load(rt, &a.model, &a.providers.policy())?;
    let mut params = engine.default_params();
    if a.sample {
        params.sampling.do_sample = true;
    }
    if let Some(t) = a.temperature {
        params.sampling.temperature = t;
    }
    if let Some(k) = a.top_k {
        params.sampling.top_k = k;
    }
    if let Some(p) = a.top_p {
        params.sampling.top_p = p;
    }
    if let Some(r) = a.repetition_penalty {
        params.sampling.repetition_penalty = r;
    }
    if let Some(s) = a.seed {
        params.sampling.seed = s;
    }
    params.max_new_tokens = a.max_tokens;
    params.stop_strings = a.stop.clone();
    params.deadline = a.deadline;
    {
        use gemba::model::exact::Switch;
        let switch = match (a.speculate, a.no_speculate) {
            (true, _) => Switch::On,
            (_, true) => Switch::Off,
            _ => Switch::Auto,
        };
        // One question: the prefix cache's default (auto) only matters within one process.
        engine.apply_speedups(&mut params, switch, None, Duration::from_secs(600));
    }
    if let Some(f) = &format {
        // Checked against the model's own vocabulary before the question is asked.
        let vocab = gemba::model::constrain::Vocabulary::of_bundle(&engine.bundle)?;
        f.check(&vocab).with_context(|| a.format.describe())?;
    }
    params.response_format = format.clone();
    let constrained = format.is_some();
    let media = gemba::model::engine::MediaFiles {
        images: a.images.clone(),
        audio: a.audio.clone(),
    };
    let mut speech = a.speech.open().context("--speak")?;
    let mut crops = match &a.crops {
        Some(dir) => Some(ask_crops(dir, &a.images)?),
        None => None,
    };
    let mut crop_err = None;
    let image_names: Vec<String> = a
        .images
        .iter()
        .map(|p| gemba::report::crop::camera_of_file(p))
        .collect();
    let cancel = CancelToken::new();
    let stdout = std::io::stdout();
    let mut io_err: Option<std::io::Error> = None;
    let json = a.json;
    let done = engine.ask_files(
        &a.prompt,
        a.system.as_deref(),
        a.raw,
        &media,
        &params,
        &cancel,
        &mut |ev: Event| {
            if let Some(s) = &mut speech {
                s.on_event(&ev);
            }
            if let (Some(c), Event::Sentence(s)) = (&mut crops, &ev) {
                match c.on_sentence(&s.text) {
                    Ok(written) => {
                        for (path, r) in written {
                            eprintln!("[crop: {} ({} box {})]", path.display(), r.camera, r.bbox);
                        }
                    }
                    // Reported after the reply; the answer itself goes on.
                    Err(e) => {
                        crop_err.get_or_insert(e);
                    }
                }
            }
            let mut out = stdout.lock();
            let r = if json {
                let mut v = serde_json::to_value(&ev).map_err(std::io::Error::other);
                if let (Ok(v), Event::Sentence(s)) = (&mut v, &ev) {
                    // The regions its markers cite, the --image files named as for --crops.
                    v["regions"] =
                        serde_json::json!(gemba::report::cite::cite(&s.text, &image_names).regions);
                }
                v.and_then(|v| writeln!(out, "{v}"))
            } else if let (true, Event::Done(d)) = (constrained, &ev) {
                // A constrained answer is printed whole (sentence breaks would change it).
                writeln!(out, "{}", d.text)
            } else if let (false, Event::Sentence(s)) = (constrained, &ev) {
                writeln!(out, "{}", s.text)
            } else {
                Ok(())
            };
            // A closed stdout (e.g. `| head`) stops the generation instead of failing every write.
            if let Err(e) = r.and_then(|_| out.flush()) {
                io_err.get_or_insert(e);
                cancel.cancel();
            }
        },
    )?;
    if let Some(s) = speech {
        let spoken = s.finish();
        if let Some(e) = &spoken.error {
            eprintln!("gemba: part of the answer could not be spoken: {e}");
        }
        let t = &spoken.timings;
        let first = t
            .first_audio_at_ms
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "-".into());
        let secs = spoken
            .clip
            .as_ref()
            .map(|c| c.samples.len() as f64 / f64::from(c.sample_rate))
            .unwrap_or(0.0);
        eprintln!("[spoken: {} sentence(s), {secs:.1} s with {} to {}; first audio {first} after the start]", t.sentences_spoken, t.tts, t.output);
    }
    if let Some(e) = io_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
    }
    if let Some(e) = crop_err {
        return Err(anyhow::Error::new(e).context("--crops"));
    }
    if let Some(c) = &crops {
        for d in &c.dropped {
            eprintln!("gemba: region marker [{}] dropped: {}", d.marker, d.reason);
        }
        eprintln!(
            "[{} crop(s) written, {} region marker(s) dropped]",
            c.written.len(),
            c.dropped.len()
        );
    }
    if !json {
        let ttfs = done
            .time_to_first_sentence_ms
            .map(|t| format!("{t:.0} ms"))
            .unwrap_or_else(|| "-".into());
        let prov: Vec<String> = done
            .providers
            .iter()
            .map(|(c, p)| format!("{c}={p}"))
            .collect();
        eprintln!(
            "[{} prompt + {} generated tokens, stop: {:?}; first token {:.0} ms, first sentence {ttfs}; prefill {:.1} tok/s, decode {:.1} tok/s; {}]",
            done.prompt_tokens,
            done.generated_tokens,
            done.stop,
            done.time_to_first_token_ms,
            done.prefill_tokens_per_s,
            done.decode_tokens_per_s,
            prov.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
